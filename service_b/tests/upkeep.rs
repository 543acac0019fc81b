//! B's upkeep thread, watched on the real binary: it sleeps between its jobs.

use std::thread;
use std::time::Duration;

use echo_core::ServerHandle;
use echo_tests::Running;

/// The voluntary context switches of B's upkeep thread so far (each wait it ends is one).
fn upkeep_switches(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    for task in tasks.filter_map(Result::ok) {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with("service_b-upkee") {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        return status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
    }
    panic!("no upkeep thread in {pid}");
}

/// With only IP addresses (no name to resolve) and `--resolve-every-ms 100`, the thread
/// wakes about ten times a second. (Once its first resolution time had passed it used to
/// wake every millisecond: about 1,000 times a second.)
#[test]
fn the_upkeep_thread_sleeps_between_its_jobs() {
    let a = service_a::spawn(service_a::Config::on("127.0.0.1:0")).expect("spawn A");
    let b = Running::start(
        "service_b",
        &[
            "--listen",
            "127.0.0.1:0",
            "--service-a-url",
            &ServerHandle::url(&a),
            "--resolve-every-ms",
            "100",
        ],
    );
    thread::sleep(Duration::from_millis(300)); // past the first resolution time
    let before = upkeep_switches(b.pid());
    thread::sleep(Duration::from_secs(1)); // the window measured, not a synchronisation
    let woke = upkeep_switches(b.pid()) - before;
    println!("the upkeep thread woke {woke} times in 1 s");
    assert!(woke < 50, "the upkeep thread woke {woke} times in 1 s");
}
