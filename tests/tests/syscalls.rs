//! System calls and context switches per request at the steady state, counted on the real
//! binaries: counts, not timings, so they belong in the tests.
//! - While 8 keep-alive clients call B (and B calls A), `strace -f -c` is attached to both;
//!   B's call may cost at most 8 system calls and 0.3 `futex`, A's answer at most 4 (its
//!   share of an `epoll_wait`, the read, the write, the re-arm, and the log writer's share).
//!   strace comes from Debian's packages; without it the test says so and passes, unless
//!   ECHO_REQUIRE_STRACE=1 (CI sets it), when it fails.
//! - While 64 keep-alive clients call B, the voluntary context switches (the sleeps) of every
//!   thread of each service (`/proc/PID/task/*/status`) are summed: at most 0.15 per answer
//!   of A (its workers take ready connections in batches; thread per connection slept once
//!   per request, 1.04) and 2.5 per call of B (a synchronous call sleeps while A answers, and
//!   at this test's load its worker sleeps again until the client's next request). The
//!   switches a busy machine forces on a thread (involuntary) are the machine's, not the
//!   design's: the benchmark reports both, at saturation.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use echo_tests::{read_reply, spawn_a, spawn_b};

const CLIENTS: usize = 8;

/// The two counts run one at a time: each one's load would be the other's noise.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
const CALLS_PER_CLIENT: usize = 400;

/// A client that calls `target` `n` times on one kept-alive connection.
fn call(addr: SocketAddr, target: &str, n: usize) -> usize {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut ok = 0;
    for _ in 0..n {
        writer.write_all(request.as_bytes()).expect("write");
        if read_reply(&mut reader).is_ok_and(|r| r.status == 200) {
            ok += 1;
        }
    }
    ok
}

/// `CLIENTS` clients at once, each making `n` calls; the calls that got a 200.
fn load(addr: SocketAddr, n: usize) -> usize {
    load_with(addr, CLIENTS, n)
}

/// `clients` clients at once, each making `n` calls; the calls that got a 200.
fn load_with(addr: SocketAddr, clients: usize, n: usize) -> usize {
    let clients: Vec<_> = (0..clients)
        .map(|_| thread::spawn(move || call(addr, "/call-echo?msg=hello", n)))
        .collect();
    clients.into_iter().map(|c| c.join().unwrap_or(0)).sum()
}

/// strace counting the system calls of every thread of `pid`, once it has attached.
fn attach(pid: u32) -> (Child, String) {
    let out = std::env::temp_dir().join(format!("echo-strace-{pid}-{}", std::process::id()));
    let mut child = Command::new("strace")
        .args(["-f", "-c", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strace");
    // strace says "Process N attached" for the process and each thread: the readiness signal.
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let attached = lines.any(|l| l.is_ok_and(|l| l.contains("attached")));
    assert!(attached, "strace never attached to {pid}");
    thread::spawn(move || lines.for_each(drop));
    (child, out.to_string_lossy().into_owned())
}

/// Stops strace (SIGINT: it writes its table and detaches) and returns (all calls, futex).
fn detach(mut strace: Child, out: &str) -> (u64, u64) {
    let pid = nix::unistd::Pid::from_raw(strace.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("stop strace");
    let _ = strace.wait();
    let table = std::fs::read_to_string(out).expect("strace's table");
    let _ = std::fs::remove_file(out);
    let calls = |name: &str| -> u64 {
        table
            .lines()
            .find(|l| l.split_whitespace().last() == Some(name))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (calls("total"), calls("futex"))
}

#[test]
fn a_call_through_b_costs_at_most_8_system_calls_and_a_answer_4() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let have = Command::new("strace").arg("-V").output().is_ok();
    if !have {
        assert!(
            std::env::var_os("ECHO_REQUIRE_STRACE").is_none(),
            "strace is required (ECHO_REQUIRE_STRACE is set) but not installed"
        );
        println!("SKIP: strace is not installed (apt-get install strace)");
        return;
    }
    let a = spawn_a(&[]);
    let a_url = format!("http://{}", a.addr);
    let b = spawn_b(&a_url, &[]);
    // Warm up: workers, pooled connections to A, first-use allocations.
    assert_eq!(load(b.addr, 50), CLIENTS * 50);

    let (a_trace, a_out) = attach(a.pid());
    let (b_trace, b_out) = attach(b.pid());
    let answered = load(b.addr, CALLS_PER_CLIENT);
    let (b_calls, b_futex) = detach(b_trace, &b_out);
    let (a_calls, a_futex) = detach(a_trace, &a_out);
    assert_eq!(answered, CLIENTS * CALLS_PER_CLIENT);

    let per = |n: u64| n as f64 / answered as f64;
    let (b_per, b_futex_per, a_per) = (per(b_calls), per(b_futex), per(a_calls));
    println!(
        "per call: B {b_per:.2} system calls ({b_futex_per:.3} futex), A {a_per:.2} ({:.3} futex)",
        per(a_futex)
    );
    assert!(b_per <= 8.0, "B: {b_per:.2} system calls per call");
    assert!(b_futex_per <= 0.3, "B: {b_futex_per:.3} futex per call");
    assert!(a_per <= 4.0, "A: {a_per:.2} system calls per request");
}

/// Voluntary context switches (sleeps) of every thread `pid` has now.
fn context_switches(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the service's threads");
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

#[test]
fn context_switches_at_64_connections_stay_under_the_pool_s_floor() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let a = spawn_a(&[]);
    let a_url = format!("http://{}", a.addr);
    let b = spawn_b(&a_url, &[]);
    const CLIENTS_64: usize = 64;
    assert_eq!(load_with(b.addr, CLIENTS_64, 20), CLIENTS_64 * 20);
    let (a_before, b_before) = (context_switches(a.pid()), context_switches(b.pid()));
    let answered = load_with(b.addr, CLIENTS_64, 100);
    let (a_after, b_after) = (context_switches(a.pid()), context_switches(b.pid()));
    assert_eq!(answered, CLIENTS_64 * 100);
    let per = |before: u64, after: u64| after.saturating_sub(before) as f64 / answered as f64;
    let (a_per, b_per) = (per(a_before, a_after), per(b_before, b_after));
    println!("context switches per call at 64 connections: B {b_per:.3}, A {a_per:.3}");
    assert!(a_per <= 0.15, "A: {a_per:.3} context switches per answer");
    assert!(b_per <= 2.5, "B: {b_per:.3} context switches per call");
}
