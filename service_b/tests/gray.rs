//! B under gray failures of its replicas, on real listeners at 127.0.0.2, .3 and .4 (no
//! container engine needed): a replica 300 ms slower than the others, one that hangs, one
//! that leaves or stops while B still calls it, A refusing work past the deadline, the retry
//! budget, and the slow start of a replica that joins. Clients check every call: a 200 with
//! the exact echo, or a 503 of the documented shape.

#![forbid(unsafe_code)]

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use echo_core::ServerHandle;
use echo_tests::{get, read_reply, Behaviour, DelayProxy, FakeA};
use service_b::{spawn, spawn_with_resolver, Config, Resolve};

/// The tests here measure shares of calls and latencies on two CPUs: each runs alone, so
/// that another's load does not become its noise.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// A real Service A on `ip`, port 0, changed by `tune`.
fn a_on(ip: &str, tune: impl FnOnce(&mut service_a::Config)) -> ServerHandle {
    let mut config = service_a::Config::on(&format!("{ip}:0"));
    tune(&mut config);
    service_a::spawn(config).expect("start A")
}

/// B on port 0 over `urls`.
fn b_over(urls: &[String], tune: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut config = Config::on("127.0.0.1:0", "http://unused");
    config.service_a_urls = urls.to_vec();
    tune(&mut config);
    spawn(config).expect("start B")
}

/// How many `/echo` calls this A answered with `status`, from its own metrics.
fn echoes(a: SocketAddr, status: u16) -> u64 {
    let text = String::from_utf8_lossy(&get(a, "/metrics").body).into_owned();
    let needle = format!(r#"http_requests_total{{method="GET",route="/echo",status="{status}"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The value of the sample `name` (with its labels, if any) in B's `/metrics`.
fn metric(b: SocketAddr, name: &str) -> u64 {
    let text = String::from_utf8_lossy(&get(b, "/metrics").body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// What the clients saw: each call's duration, and the calls that broke that rule.
#[derive(Debug, Default)]
struct Seen {
    took: Vec<Duration>,
    wrong: Vec<String>,
}

impl Seen {
    fn over(&self, limit: Duration) -> usize {
        self.took.iter().filter(|t| **t > limit).count()
    }

    fn p99(&self) -> Duration {
        let mut sorted = self.took.clone();
        sorted.sort();
        sorted
            .get(sorted.len() * 99 / 100)
            .copied()
            .unwrap_or_default()
    }
}

/// `clients` keep-alive clients calling B for `span`; every answer is checked.
fn load(b: SocketAddr, clients: usize, span: Duration) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            thread::spawn(move || client(b, c, &stop, &seen))
        })
        .collect();
    thread::sleep(span); // the load's length, not a synchronisation
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    Arc::try_unwrap(seen)
        .map(|m| m.into_inner().unwrap_or_default())
        .unwrap_or_default()
}

fn client(b: SocketAddr, c: usize, stop: &AtomicBool, seen: &Mutex<Seen>) {
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let msg = format!("c{c}-{n}");
        let (w, r) = match conn.take() {
            Some(pair) => pair,
            None => {
                let s = TcpStream::connect(b).expect("connect B");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let r = BufReader::new(s.try_clone().expect("clone"));
                (s, r)
            }
        };
        let (mut w, mut r) = (w, r);
        let started = Instant::now();
        let sent =
            w.write_all(format!("GET /call-echo?msg={msg} HTTP/1.1\r\nHost: b\r\n\r\n").as_bytes());
        let reply = sent.and_then(|()| read_reply(&mut r));
        let took = started.elapsed();
        let verdict = match &reply {
            Ok(reply)
                if reply.status == 200 && reply.json()["echo_response"]["echo"] == msg.as_str() =>
            {
                None
            }
            Ok(reply)
                if reply.status == 503 && reply.json()["error"] == "Service A unavailable" =>
            {
                Some(format!("503 {}", reply.json()["kind"]))
            }
            Ok(reply) => Some(format!(
                "{} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )),
            Err(e) => Some(format!("no answer: {e}")),
        };
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.took.push(took);
        if let Some(wrong) = verdict {
            seen.wrong.push(wrong);
        }
        drop(seen);
        if reply.is_ok() {
            conn = Some((w, r));
        }
    }
}

#[test]
fn a_replica_300ms_slower_gets_almost_no_calls_and_wins_its_share_back() {
    let _alone = alone();
    let fast: Vec<_> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|ip| a_on(ip, |_| {}))
        .collect();
    let slow = a_on("127.0.0.4", |c| c.delay_ms = 300);
    let slow_addr = slow.addr();
    let mut urls: Vec<String> = fast.iter().map(ServerHandle::url).collect();
    urls.push(slow.url());
    let b = b_over(&urls, |_| {});
    for clients in [1, 12] {
        let seen = load(b.addr(), clients, Duration::from_secs(3));
        let paid = seen.over(Duration::from_millis(250));
        println!(
            "{clients} client(s): {} calls, p99 {:?}, {paid} over 250 ms",
            seen.took.len(),
            seen.p99()
        );
        assert!(
            seen.wrong.is_empty(),
            "{:?}",
            &seen.wrong[..seen.wrong.len().min(5)]
        );
        assert!(
            paid * 100 < seen.took.len(),
            "{paid} of {} calls paid the slow replica",
            seen.took.len()
        );
    }
    // The slow one served almost nothing: its delayed answers, and the probes it refused
    // at once (their budget was far below its 300 ms).
    assert!(
        echoes(slow_addr, 200) < 30,
        "{} calls went to the slow replica",
        echoes(slow_addr, 200)
    );
    assert!(echoes(slow_addr, 504) > 0, "never probed");

    // It recovers (restarted without the delay, same address): probes find it fast, and it
    // takes its share of calls again.
    let _ = slow.shutdown(Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(5);
    let recovered = loop {
        match service_a::spawn(service_a::Config::on(&slow_addr.to_string())) {
            Ok(a) => break a,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(50)); // the old listener is still closing
            }
            Err(e) => panic!("cannot listen on {slow_addr} again: {e}"),
        }
    };
    let warm = load(b.addr(), 4, Duration::from_secs(3));
    assert!(warm.wrong.is_empty(), "{:?}", warm.wrong);
    let before = echoes(recovered.addr(), 200);
    let seen = load(b.addr(), 4, Duration::from_secs(2));
    let share = (echoes(recovered.addr(), 200) - before) as f64 / seen.took.len().max(1) as f64;
    println!("recovered share: {:.0} %", share * 100.0);
    assert!(
        share > 0.15,
        "the recovered replica got {:.1} % of the calls",
        share * 100.0
    );
}

#[test]
fn a_hung_replica_costs_at_most_three_calls_over_a_second() {
    let _alone = alone();
    let live: Vec<_> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|ip| a_on(ip, |_| {}))
        .collect();
    let hung = FakeA::start(Behaviour::Silent); // accepts, reads, never answers
    let mut urls: Vec<String> = live.iter().map(ServerHandle::url).collect();
    urls.push(hung.url());
    let b = b_over(&urls, |_| {});
    let seen = load(b.addr(), 12, Duration::from_secs(5));
    let slow = seen.over(Duration::from_secs(1));
    println!(
        "{} calls, p99 {:?}, {slow} over 1 s, the hung replica got {}",
        seen.took.len(),
        seen.p99(),
        hung.requests().len()
    );
    assert!(
        seen.wrong.is_empty(),
        "{:?}",
        &seen.wrong[..seen.wrong.len().min(5)]
    );
    assert!(slow <= 3, "{slow} calls took over 1 s");
    assert!(
        !hung.requests().is_empty(),
        "the hung replica was never tried"
    );
}

/// A name whose addresses the test sets: it answers what `addrs` holds at the time.
fn name_for(addrs: &Arc<Mutex<Vec<SocketAddr>>>) -> Resolve {
    let addrs = Arc::clone(addrs);
    Arc::new(move |_, _| Ok(addrs.lock().map(|a| a.clone()).unwrap_or_default()))
}

#[test]
fn replicas_that_stop_drain_or_leave_cost_no_call() {
    let _alone = alone();
    let a: Vec<_> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .iter()
        .map(|ip| a_on(ip, |c| c.drain_ms = 0))
        .collect();
    let addrs = Arc::new(Mutex::new(
        a.iter().map(ServerHandle::addr).collect::<Vec<_>>(),
    ));
    let mut config = Config::on("127.0.0.1:0", "http://replicas.test:1");
    config.resolve_every_ms = 5000; // B's view goes stale: the calls must cope until then
    let b = spawn_with_resolver(config, name_for(&addrs)).expect("start B");
    let addr = b.addr();
    let calls = thread::spawn(move || load(addr, 12, Duration::from_secs(4)));
    let mut a = a.into_iter();
    let (first, second, third) = (a.next(), a.next(), a.next());
    thread::sleep(Duration::from_millis(700));
    // Scale-in: the name stops naming one replica, which stops at once.
    if let Some(first) = first {
        addrs.lock().expect("lock").retain(|x| *x != first.addr());
        let _ = first.shutdown(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(700));
    // A replica still in the name drains (as on SIGTERM), then stops.
    if let Some(second) = second {
        second.drain();
        assert_eq!(get(second.addr(), "/ready").status, 503, "not draining");
        thread::sleep(Duration::from_millis(500));
        let _ = second.shutdown(Duration::from_millis(100));
    }
    let seen = calls.join().expect("load");
    println!("{} calls, p99 {:?}", seen.took.len(), seen.p99());
    assert!(
        seen.wrong.is_empty(),
        "{} wrong: {:?}",
        seen.wrong.len(),
        &seen.wrong[..seen.wrong.len().min(5)]
    );
    assert!(
        seen.over(Duration::from_secs(1)) == 0,
        "a call took over 1 s"
    );
    drop(third);
}

#[test]
fn a_draining_replica_gets_no_new_calls_and_its_stop_costs_no_retry() {
    let _alone = alone();
    let stays = a_on("127.0.0.2", |_| {});
    let leaves = a_on("127.0.0.3", |_| {});
    let leaves_addr = leaves.addr();
    let b = b_over(&[stays.url(), leaves.url()], |_| {});
    assert!(load(b.addr(), 4, Duration::from_millis(500))
        .wrong
        .is_empty());
    assert!(echoes(leaves_addr, 200) > 0, "both replicas serve at first");

    // It drains (SIGTERM): its answers close their connections, and B stops sending to it.
    leaves.drain();
    let before = echoes(leaves_addr, 200);
    assert!(load(b.addr(), 4, Duration::from_secs(1)).wrong.is_empty());
    let during = echoes(leaves_addr, 200) - before;
    println!("calls to the draining replica after its drain began: {during}");
    assert!(during <= 8, "{during} calls went to a draining replica");

    // Its drain ends: it refuses new connections while still in B's view. No call needs a
    // retry, because none goes there.
    leaves.stop_accepting();
    let retries = metric(b.addr(), "upstream_retries_total");
    let seen = load(b.addr(), 4, Duration::from_secs(1));
    assert!(seen.wrong.is_empty(), "{:?}", seen.wrong);
    assert_eq!(
        metric(b.addr(), "upstream_retries_total"),
        retries,
        "retries"
    );

    // A new process at its address is ready: B asks its /ready and sends to it again.
    let _ = leaves.shutdown(Duration::from_millis(100));
    let deadline = Instant::now() + Duration::from_secs(5);
    let back = loop {
        match service_a::spawn(service_a::Config::on(&leaves_addr.to_string())) {
            Ok(a) => break a,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("cannot listen on {leaves_addr} again: {e}"),
        }
    };
    assert!(load(b.addr(), 4, Duration::from_secs(2)).wrong.is_empty());
    assert!(echoes(back.addr(), 200) > 0, "never sent to again");
    let drains = format!(r#"upstream_drains_total{{replica="{leaves_addr}"}}"#);
    assert_eq!(metric(b.addr(), &drains), 1, "one drain seen");
}

#[test]
fn a_that_cannot_finish_within_the_deadline_says_so_at_once() {
    let _alone = alone();
    let slow = a_on("127.0.0.2", |c| c.delay_ms = 3000);
    let b = b_over(&[slow.url()], |c| c.timeout_ms = 2000);
    let started = Instant::now();
    let r = get(b.addr(), "/call-echo?msg=x");
    let took = started.elapsed();
    assert_eq!(
        (r.status, r.json()["kind"].as_str()),
        (503, Some("timeout"))
    );
    // Said truthfully: A refused at once, the deadline did not pass.
    let details = r.json()["details"].as_str().unwrap_or("").to_string();
    assert!(
        details
            .starts_with("Timeout calling Service A: it refused at once, needing more than the ")
            && details.ends_with("ms left of 2.0s"),
        "{details}"
    );
    assert!(
        took < Duration::from_millis(1000),
        "answered after {took:?}"
    );
    // A refused at once, without holding its thread for 3 s.
    assert_eq!((echoes(slow.addr(), 504), echoes(slow.addr(), 200)), (1, 0));
}

#[test]
fn the_retry_budget_bounds_the_retries() {
    let _alone = alone();
    let down: Vec<String> = (0..3)
        .map(|_| format!("http://{}", echo_tests::closed_port()))
        .collect();
    let b = b_over(&down, |c| c.breaker_threshold = 0);
    for _ in 0..200 {
        assert_eq!(get(b.addr(), "/call-echo?msg=x").json()["kind"], "connect");
    }
    let (retries, denied) = (
        metric(b.addr(), "upstream_retries_total"),
        metric(b.addr(), "upstream_retries_denied_total"),
    );
    println!("200 calls: {retries} retries, {denied} denied");
    assert!(retries <= 200 / 5 + 10, "{retries} retries for 200 calls");
    assert!(
        denied > 0 && retries + denied == 200,
        "{retries} + {denied}"
    );
}

#[test]
fn a_replica_that_joins_starts_slowly() {
    let _alone = alone();
    let (one, two, three) = (
        a_on("127.0.0.2", |_| {}),
        a_on("127.0.0.3", |_| {}),
        a_on("127.0.0.4", |_| {}),
    );
    let addrs = Arc::new(Mutex::new(vec![one.addr(), two.addr()]));
    let mut config = Config::on("127.0.0.1:0", "http://replicas.test:1");
    config.resolve_every_ms = 100;
    config.slow_start_ms = 3000;
    let b = spawn_with_resolver(config, name_for(&addrs)).expect("start B");
    assert!(load(b.addr(), 2, Duration::from_millis(300))
        .wrong
        .is_empty());
    addrs.lock().expect("lock").push(three.addr());
    let deadline = Instant::now() + Duration::from_secs(5);
    while echoes(three.addr(), 200) == 0 && Instant::now() < deadline {
        assert!(load(b.addr(), 2, Duration::from_millis(50))
            .wrong
            .is_empty());
    }
    let share = |seen: &Seen, before: u64| {
        (echoes(three.addr(), 200) - before) as f64 / seen.took.len().max(1) as f64
    };
    let before = echoes(three.addr(), 200);
    let early = load(b.addr(), 2, Duration::from_millis(700));
    let early_share = share(&early, before);
    thread::sleep(Duration::from_millis(2500)); // past the slow start
    let before = echoes(three.addr(), 200);
    // Two seconds, so that a passing spike of one estimate (a busy machine) averages out.
    let late = load(b.addr(), 2, Duration::from_secs(2));
    let late_share = share(&late, before);
    println!(
        "share of the new replica: {:.0} % at first, {:.0} % after its slow start",
        early_share * 100.0,
        late_share * 100.0
    );
    assert!(early_share < 0.2, "{early_share}");
    assert!(late_share > 0.2, "a third expected: {late_share}");
}

/// A whole answer of `status` with `extra` header lines and a JSON `body`, then a close.
fn raw(status: u16, extra: &str, body: &str) -> Behaviour {
    Behaviour::Raw(format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// One replica of three answers at once what no healthy A answers to B's request: a 4xx
/// (version skew, another service on the port, a rate limiter) or a false echo with extra
/// keys. While the others answer 200 it is a failing replica: each of its answers is retried
/// elsewhere, it is ejected within a second, and no client gets its answer as a 200. Before,
/// a 4xx replica kept its full share (27-29 % of the calls failed, no ejection) and a lying
/// one passed its echo on as a 200.
#[test]
fn a_replica_answering_4xx_or_a_false_echo_costs_few_calls_and_is_ejected() {
    let _alone = alone();
    let good = [a_on("127.0.0.2", |_| {}), a_on("127.0.0.3", |_| {})];
    let lie = r#"{"echo":"WRONG","injected":{"x":1}}"#;
    let cases = [
        ("404", raw(404, "", r#"{"error":"Not found"}"#)),
        ("400", raw(400, "", r#"{"error":"bad"}"#)),
        ("429 Retry-After: 5", raw(429, "Retry-After: 5\r\n", "{}")),
        ("429", raw(429, "", "{}")),
        ("a false echo", raw(200, "", lie)),
    ];
    for (name, behaviour) in cases {
        let bad = FakeA::start(behaviour);
        let b = b_over(&[good[0].url(), good[1].url(), bad.url()], |_| {});
        let addr = b.addr();
        let started = Instant::now();
        let calls = thread::spawn(move || load(addr, 8, Duration::from_secs(2)));
        let ejections = format!(r#"upstream_ejections_total{{replica="{}"}}"#, bad.addr);
        let mut ejected_after = None;
        while ejected_after.is_none() && started.elapsed() < Duration::from_secs(2) {
            if metric(addr, &ejections) > 0 {
                ejected_after = Some(started.elapsed());
            }
            thread::sleep(Duration::from_millis(5)); // the pace of the polling
        }
        let seen = calls.join().expect("load");
        let false_200 = seen.wrong.iter().filter(|w| w.starts_with("200")).count();
        println!(
            "{name}: {} calls, {} failed, ejected after {ejected_after:?}, it got {}",
            seen.took.len(),
            seen.wrong.len(),
            bad.requests().len()
        );
        assert_eq!(
            false_200,
            0,
            "{name}: {:?}",
            &seen.wrong[..seen.wrong.len().min(3)]
        );
        assert!(
            seen.wrong.len() <= 10,
            "{name}: {} failed: {:?}",
            seen.wrong.len(),
            &seen.wrong[..seen.wrong.len().min(5)]
        );
        assert!(
            ejected_after.is_some_and(|t| t < Duration::from_secs(1)),
            "{name}: ejected after {ejected_after:?}"
        );
    }
}

/// When every replica answers a 4xx or a false echo, B asked wrongly (or all are broken
/// alike): the client gets the `status` or `bad_response` it got before, and no replica
/// is ejected for it.
#[test]
fn a_wrong_answer_from_every_replica_ejects_none() {
    let _alone = alone();
    for (kind, behaviour) in [
        ("status", raw(404, "", r#"{"error":"Not found"}"#)),
        ("bad_response", raw(200, "", r#"{"echo":"WRONG"}"#)),
    ] {
        let fakes = [FakeA::start(behaviour.clone()), FakeA::start(behaviour)];
        let b = b_over(&[fakes[0].url(), fakes[1].url()], |c| {
            c.breaker_threshold = 2
        });
        for i in 0..20 {
            let r = get(b.addr(), &format!("/call-echo?msg=m{i}"));
            assert_eq!((r.status, r.json()["kind"].as_str()), (503, Some(kind)));
        }
        let text = String::from_utf8_lossy(&get(b.addr(), "/metrics").body).into_owned();
        for fake in &fakes {
            let closed = format!(r#"circuit_breaker_state{{replica="{}"}} 0"#, fake.addr);
            assert!(text.contains(&closed), "{kind}: {text}");
        }
    }
}

/// One replica of three is 300 ms slow on its network (a proxy delays every chunk; it cannot
/// refuse work it cannot finish in time, as `--delay-ms` can). Its probes answer 200 but
/// far slower than the fleet, so it is not readmitted while it stays slow, and the
/// clients barely notice it. Before, a probe answering within 1 s readmitted it: it was
/// ejected and readmitted again and again (here with short cooldowns, 500 ms up to 1 s).
#[test]
fn a_replica_slow_on_its_network_is_not_readmitted_while_slow() {
    let _alone = alone();
    let fast = [a_on("127.0.0.2", |_| {}), a_on("127.0.0.3", |_| {})];
    let behind = a_on("127.0.0.4", |_| {});
    let slow = DelayProxy::start("127.0.0.5", behind.addr(), Duration::from_millis(300));
    let b = b_over(&[fast[0].url(), fast[1].url(), slow.url()], |c| {
        c.breaker_cooldown_ms = 500;
        c.breaker_max_cooldown_ms = 1000;
    });
    for clients in [1, 12] {
        let seen = load(b.addr(), clients, Duration::from_secs(4));
        // The p99 is shown, not asserted (the goal, under 20 ms, is the benchmark's: on a
        // shared machine a test's latencies are its neighbours'); calls that waited for the
        // slow replica's answer are counted.
        let (over, paid) = (
            seen.over(Duration::from_millis(20)),
            seen.over(Duration::from_millis(250)),
        );
        println!(
            "{clients} client(s): {} calls, p99 {:?}, {over} over 20 ms, {paid} over 250 ms",
            seen.took.len(),
            seen.p99()
        );
        assert!(
            seen.wrong.is_empty(),
            "{:?}",
            &seen.wrong[..seen.wrong.len().min(5)]
        );
        assert!(
            paid * 100 < seen.took.len(),
            "{paid} of {} calls paid the slow replica",
            seen.took.len()
        );
    }
    let readmitted = format!(
        r#"upstream_probes_total{{replica="{}",kind="health",result="ok"}}"#,
        slow.addr
    );
    let probed = format!(
        r#"upstream_probes_total{{replica="{}",kind="health",result="failed"}}"#,
        slow.addr
    );
    let (readmissions, refused) = (metric(b.addr(), &readmitted), metric(b.addr(), &probed));
    println!("the slow replica: {readmissions} readmissions, {refused} probes too slow");
    assert!(
        readmissions <= 1,
        "readmitted {readmissions} times while slow"
    );
    assert!(refused > 0, "never probed");
}

/// A healthy replica that closes every connection after its answer (keep-alive off, legal
/// HTTP/1.1) keeps its share: its `/ready` says 200, so it is not draining. Before, the
/// first answer with `Connection: close` marked it draining, and again after each `/ready`.
#[test]
fn a_replica_with_keep_alive_off_is_not_taken_for_draining() {
    let _alone = alone();
    let a = a_on("127.0.0.2", |_| {});
    let closing = FakeA::start(Behaviour::EchoClosing);
    let b = b_over(&[a.url(), closing.url()], |_| {});
    let seen = load(b.addr(), 4, Duration::from_secs(2));
    assert!(
        seen.wrong.is_empty(),
        "{:?}",
        &seen.wrong[..seen.wrong.len().min(5)]
    );
    let echoes = closing
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /echo"))
        .count();
    let drains = format!(r#"upstream_drains_total{{replica="{}"}}"#, closing.addr);
    let share = echoes as f64 / seen.took.len().max(1) as f64;
    println!(
        "{} calls, {:.0} % to the closing replica, {} drains",
        seen.took.len(),
        share * 100.0,
        metric(b.addr(), &drains)
    );
    assert_eq!(metric(b.addr(), &drains), 0, "taken for draining");
    // A new connection per call makes it the slower of the two, so its share is smaller
    // than half; taken for draining, it got almost none (a call per /ready check).
    assert!(share > 0.02, "it got {:.1} % of the calls", share * 100.0);
}
