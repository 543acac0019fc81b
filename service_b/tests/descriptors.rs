//! B's descriptors, counted on the real binary (`/proc/PID/fd`): its pooled connections to
//! A stay within their bound whatever the number of client connections and replicas, and
//! B's own lack of descriptors is never held against a replica.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use echo_core::ServerHandle;
use echo_tests::{read_reply, Reply, Running};

/// One test at a time: each counts descriptors and threads of processes it starts.
static ALONE: Mutex<()> = Mutex::new(());

/// B's default `--max-inflight`, which bounds its idle connections to A.
const MAX_INFLIGHT: u64 = 64;

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A keep-alive client connection to B.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn open(b: SocketAddr) -> Client {
        let writer = TcpStream::connect(b).expect("connect to B");
        writer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let reader = BufReader::new(writer.try_clone().expect("clone"));
        Client { writer, reader }
    }

    fn get(&mut self, target: &str) -> std::io::Result<Reply> {
        let head = format!("GET {target} HTTP/1.1\r\nHost: b\r\n\r\n");
        self.writer.write_all(head.as_bytes())?;
        read_reply(&mut self.reader)
    }
}

/// The value of the sample `name` in B's `/metrics` (0 when absent).
fn metric(client: &mut Client, name: &str) -> u64 {
    let reply = client.get("/metrics").expect("metrics");
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// With 10 replicas and 200 keep-alive client connections making 20 calls each (16 at a
/// time, within the bulkhead), B's idle connections to A stay within `--max-inflight` and
/// its descriptors under two per client connection plus that bound. (With one pool per
/// connection thread, as before, each thread kept up to 8 idle connections: about 9
/// descriptors per client connection.)
#[test]
fn pooled_connections_stay_within_their_bound() {
    let _alone = alone();
    let replicas: Vec<ServerHandle> = (0..10)
        .map(|_| service_a::spawn(service_a::Config::on("127.0.0.1:0")).expect("spawn A"))
        .collect();
    let urls: Vec<String> = replicas.iter().map(ServerHandle::url).collect();
    let urls = urls.join(",");
    let b = Running::start(
        "service_b",
        &["--listen", "127.0.0.1:0", "--service-a-url", &urls],
    );
    let clients: Vec<Mutex<Client>> = (0..200).map(|_| Mutex::new(Client::open(b.addr))).collect();
    let failed = Mutex::new(Vec::new());
    thread::scope(|s| {
        for worker in 0..16 {
            let (clients, failed) = (&clients, &failed);
            s.spawn(move || {
                for round in 0..20 {
                    for (i, client) in clients.iter().enumerate().skip(worker).step_by(16) {
                        let mut client = client.lock().unwrap_or_else(|p| p.into_inner());
                        let msg = format!("c{i}-{round}");
                        let reply = client.get(&format!("/call-echo?msg={msg}"));
                        let ok = reply.as_ref().is_ok_and(|r| {
                            r.status == 200 && r.json()["echo_response"]["echo"] == msg.as_str()
                        });
                        if !ok {
                            let mut failed = failed.lock().unwrap_or_else(|p| p.into_inner());
                            failed.push(format!("{msg}: {:?}", reply.map(|r| r.status)));
                        }
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // Every client connection is still open and idle now.
    let fds = b.open_fds();
    let mut first = clients[0].lock().unwrap_or_else(|p| p.into_inner());
    let idle = metric(&mut first, "upstream_idle_connections");
    println!(
        "B after 4000 calls from 200 client connections to 10 replicas: {fds} descriptors, \
         {idle} idle connections to A, {} KiB resident, {} threads",
        b.rss_kib(),
        b.threads()
    );
    assert!(
        fds < 2 * clients.len() as u64 + MAX_INFLIGHT,
        "{fds} descriptors for {} client connections",
        clients.len()
    );
    assert!(b.rss_kib() < 64 * 1024, "{} KiB resident", b.rss_kib());
    assert!(idle > 0, "B keeps no connection to A at all");
    assert!(idle <= MAX_INFLIGHT, "{idle} idle connections to A");
}

/// B out of descriptors when it connects to A: a 503 `connect` that says it is B's own
/// failure, and no verdict on the replica: with a breaker threshold of 2, ten such calls
/// eject nothing, and the replica serves the next call once B has descriptors again.
#[test]
fn b_s_own_lack_of_descriptors_is_never_held_against_a_replica() {
    let _alone = alone();
    let a = service_a::spawn(service_a::Config::on("127.0.0.1:0")).expect("spawn A");
    let b = Running::start(
        "service_b",
        &[
            "--listen",
            "127.0.0.1:0",
            "--service-a-url",
            &a.url(),
            "--breaker-threshold",
            "2",
        ],
    );
    let mut client = Client::open(b.addr);
    assert_eq!(client.get("/health").expect("health").status, 200);
    // From now on B may open no descriptor: the limit is its highest one plus one, and
    // every lower number is taken by connections it accepts, until it holds the limit.
    let highest = std::fs::read_dir(format!("/proc/{}/fd", b.pid()))
        .expect("fds")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let limit = highest + 1;
    let pid = b.pid() as rlimit::pid_t;
    let (mut soft, mut hard) = (0, 0);
    rlimit::prlimit(
        pid,
        rlimit::Resource::NOFILE,
        None,
        Some((&mut soft, &mut hard)),
    )
    .expect("prlimit");
    rlimit::prlimit(pid, rlimit::Resource::NOFILE, Some((limit, hard)), None).expect("prlimit");
    let mut fillers = Vec::new();
    while b.open_fds() < limit && fillers.len() < 4096 {
        let mut filler = Client::open(b.addr);
        filler
            .writer
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        // Answered once B has accepted it; the one it cannot accept waits out the 2 s.
        let _ = filler.get("/health");
        fillers.push(filler);
    }
    assert_eq!(b.open_fds(), limit, "B's descriptors are not all taken");
    println!(
        "B's limit {limit}: {} more client connections, then B holds {} descriptors",
        fillers.len(),
        b.open_fds()
    );
    for i in 0..10 {
        let reply = client.get("/call-echo?msg=x").expect("call-echo");
        let details = reply.json()["details"].as_str().unwrap_or("").to_string();
        assert_eq!(
            (reply.status, reply.json()["kind"].as_str()),
            (503, Some("connect")),
            "call {i}: {details}"
        );
        assert!(
            details.starts_with("Connection error: B itself: "),
            "call {i}: {details}"
        );
    }
    let ejections = metric(
        &mut client,
        &format!("upstream_ejections_total{{replica=\"{}\"}}", a.addr()),
    );
    let state = metric(
        &mut client,
        &format!("circuit_breaker_state{{replica=\"{}\"}}", a.addr()),
    );
    assert_eq!(
        (ejections, state),
        (0, 0),
        "the replica was held responsible"
    );
    drop(fillers);
    rlimit::prlimit(pid, rlimit::Resource::NOFILE, Some((soft, hard)), None).expect("prlimit");
    let reply = client.get("/call-echo?msg=back").expect("call-echo");
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}
