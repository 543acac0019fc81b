//! The server's deadlines, on the real binaries: a new connection that sends nothing ends
//! after the head timeout, and a reader too slow for a whole answer is closed after the write
//! limit. Each takes the deadline's own 10 s; the bounds around it are generous.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use echo_tests::{get, spawn_a};

#[test]
fn a_new_connection_that_sends_nothing_ends_after_the_head_timeout() {
    let a = spawn_a(&[]);
    let mut stream = TcpStream::connect(a.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let took = started.elapsed();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "closed after {took:?}: not the 10 s head timeout (idle keep-alive is 60 s)"
    );
}

#[test]
fn a_reader_too_slow_for_a_whole_answer_is_closed_after_the_write_limit() {
    let a = spawn_a(&[]);
    // Answers of about 16 KB (each %01 is six bytes of JSON), pipelined, read at about
    // 500 bytes a second: every write makes some progress within 10 s, the whole answer
    // does not. The write limit is for the answer, so the connection ends after it.
    let target = format!("/echo?msg={}", "%01".repeat(2700));
    // A small receive buffer, so that the kernel holds few answers for us.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&a.addr.into()).expect("connect");
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // Requests keep coming, pipelined, from a thread of their own (its writes block once A
    // stops reading them).
    let mut writer = stream.try_clone().expect("clone");
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    thread::spawn(move || while writer.write_all(request.as_bytes()).is_ok() {});
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    let closed = loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break started.elapsed(),
            Ok(_) if started.elapsed() > Duration::from_secs(60) => {
                panic!("still open after 60 s")
            }
            Ok(_) => thread::sleep(Duration::from_secs(2)),
        }
    };
    // The buffers held some answers at first; the one that filled them had 10 s.
    assert!(closed < Duration::from_secs(40), "closed after {closed:?}");
    assert_eq!(get(a.addr, "/health").status, 200);
}
