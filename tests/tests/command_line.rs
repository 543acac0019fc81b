//! The command line and the environment of the real binaries: start-up errors are one line
//! and a non-zero exit, every flag is also read from its environment variable, every
//! duration and count flag is bounded, and a `--service-a-url` with user information is
//! refused without showing it.

#![forbid(unsafe_code)]

use echo_tests::{get, service_command, Behaviour, FakeA, Running};

/// Runs a binary with `args`; returns its exit code and stderr.
fn run(name: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = service_command(name).args(args).output().expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn start_up_errors_are_one_line_and_non_zero() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("service_a", vec!["--listen", &addr]),
        ("service_a", vec!["--listen", "not-an-address"]),
        ("service_a", vec!["--bogus"]),
        ("service_a", vec!["--delay-ms", "soon"]),
        ("service_b", vec!["--service-a-url", "https://127.0.0.1:1"]),
        ("service_b", vec!["--timeout-ms", "0"]),
        ("service_b", vec!["--listen", "127.0.0.1:99999"]),
        ("service_b", vec!["--max-connections", "0"]),
        ("service_b", vec!["--log-level", "loud"]),
    ];
    for (name, args) in cases {
        let out = service_command(name).args(&args).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{name} {args:?}");
        assert!(
            out.status.code().is_some(),
            "killed by a signal: {name} {args:?}"
        );
        assert_eq!(stderr.lines().count(), 1, "{name} {args:?}: {stderr:?}");
        assert!(stderr.starts_with(&format!("{name}: ")), "{stderr:?}");
        assert!(!stderr.contains("panicked"), "{stderr:?}");
    }
    for name in ["service_a", "service_b"] {
        let help = service_command(name).arg("--help").output().expect("run");
        assert_eq!(help.status.code(), Some(0));
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            text.contains("--listen") && text.contains("[env: "),
            "{text}"
        );
        let version = service_command(name)
            .arg("--version")
            .output()
            .expect("run");
        assert_eq!(version.status.code(), Some(0));
    }
}

#[test]
fn env_vars_configure_the_binaries() {
    let out = service_command("service_b")
        .env("SERVICE_B_TIMEOUT_MS", "nope")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeout"));
    // A good value is used: B listens where SERVICE_B_LISTEN says, calls the A of
    // SERVICE_A_URL, and gives up after SERVICE_B_TIMEOUT_MS, with no flag at all.
    let silent = FakeA::start(Behaviour::Silent);
    let url = silent.url();
    let env = [
        ("SERVICE_B_LISTEN", "127.0.0.1:0"),
        ("SERVICE_A_URL", url.as_str()),
        ("SERVICE_B_TIMEOUT_MS", "300"),
    ];
    let b = Running::start_with_env("service_b", &[], &env);
    let reply = get(b.addr, "/call-echo?msg=x");
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.json()["details"],
        "Timeout calling Service A after 0.3s"
    );
    assert!(silent.wait_for_requests(1), "B did not call SERVICE_A_URL");
}

#[test]
fn every_duration_and_count_flag_is_bounded() {
    let huge = "18446744073709551615";
    let cases: [(&str, &str); 11] = [
        ("service_a", "--delay-ms"),
        ("service_a", "--max-delay-ms"),
        ("service_a", "--drain-ms"),
        ("service_b", "--timeout-ms"),
        ("service_b", "--breaker-cooldown-ms"),
        ("service_b", "--breaker-max-cooldown-ms"),
        ("service_b", "--breaker-threshold"),
        ("service_b", "--max-inflight"),
        ("service_b", "--slow-start-ms"),
        ("service_b", "--retry-budget-percent"),
        ("service_b", "--forget-departed-ms"),
    ];
    for (name, flag) in cases {
        let (code, stderr) = run(name, &["--listen", "127.0.0.1:0", flag, huge]);
        assert_eq!(code, Some(2), "{name} {flag}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name} {flag}: {stderr}");
    }
}

#[test]
fn a_service_a_url_with_user_information_is_refused_and_never_shown() {
    let (code, stderr) = run(
        "service_b",
        &[
            "--listen",
            "127.0.0.1:0",
            "--service-a-url",
            "http://admin:s3cret@127.0.0.1:1",
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("user information"), "{stderr}");
    assert!(
        !stderr.contains("s3cret"),
        "the password reached stderr: {stderr}"
    );
}
