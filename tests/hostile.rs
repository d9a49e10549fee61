//! Hostile clients on the data path and under overload, with the defaults:
//! urgent data, idle connections that would hold every slot, floods that
//! would spend everyone's budget.

mod common;
use common::*;
use nix::sys::socket::{self, MsgFlags};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODES: [&str; 3] = ["auto", "splice", "copy"];

#[test]
fn urgent_bytes_come_back_in_order_and_the_child_never_spins() {
    for mode in MODES {
        let srv = Server::start(&["--echo", mode]);
        let (mut s, child) = open_session(&srv, b"a");
        socket::send(s.as_raw_fd(), b"U", MsgFlags::MSG_OOB).unwrap();
        s.write_all(b"b").unwrap();
        assert_eq!(read_exact_within(&mut s, 2, SOON), b"Ub", "{mode}");
        // The session is idle now: its CPU time must stay flat (a splice
        // loop stuck at the urgent mark burns most of a core).
        let before = cpu_ticks(child);
        std::thread::sleep(Duration::from_secs(1));
        let used = cpu_ticks(child) - before;
        assert!(
            used <= 5,
            "{mode}: child used {used} ticks in an idle second"
        );
        s.write_all(b"after").unwrap();
        assert_eq!(read_exact_within(&mut s, 5, SOON), b"after", "{mode}");
    }
}

#[test]
fn idle_holders_do_not_lock_out_a_newcomer() {
    // The defaults: 64 children, backlog 128, --evict-after 1.
    let srv = Server::start(&[]);
    // 300 connections that say nothing, each connected before the next
    // (beyond the backlog a connect waits for the kernel's SYN retry while
    // idle sessions are ended in turn to make room).
    let holders: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect_timeout(&srv.addr, Duration::from_secs(60)).expect("connect"))
        .collect();
    // Wait until every holder has been accepted: the backlog is empty.
    let deadline = Instant::now() + Duration::from_secs(60);
    while srv.counter("accepted") < 300 {
        assert!(Instant::now() < deadline, "{}", srv.status());
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = Instant::now();
    round_trip(&srv, b"newcomer");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "newcomer waited {took:?}");
    assert!(srv.counter("evicted") >= 237, "{}", srv.status());
    drop(holders);
}

#[test]
fn two_hundred_clients_holding_on_until_all_are_echoed() {
    let srv = Server::start(&[]);
    let n = 200;
    // Counts clients done (echoed or failed); each holds its connection
    // until all are, or the deadline passes (a failed one must not hang
    // the rest).
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(90);
    let addr = srv.addr;
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let done = done.clone();
            std::thread::spawn(move || {
                let msg = format!("client {i:03} says hello\n");
                let echoed = std::panic::catch_unwind(|| {
                    let mut s = TcpStream::connect_timeout(&addr, SOON).expect("connect");
                    s.write_all(msg.as_bytes()).unwrap();
                    let left = deadline.saturating_duration_since(Instant::now());
                    let got = read_exact_within(&mut s, msg.len(), left);
                    (got == msg.as_bytes(), s)
                });
                done.fetch_add(1, Ordering::SeqCst);
                while done.load(Ordering::SeqCst) < n && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                echoed.map(|(ok, _held)| ok).unwrap_or(false)
            })
        })
        .collect();
    let ok = clients
        .into_iter()
        .filter_map(|c| c.join().ok())
        .filter(|ok| *ok)
        .count();
    assert_eq!(ok, n, "{}", srv.status());
}

#[test]
fn a_busy_session_is_never_ended_for_a_newcomer() {
    let srv = Server::start(&["--max-children", "2"]);
    let (mut idle, _) = open_session(&srv, b"i");
    let mut busy = srv.connect();
    let stop = Instant::now() + Duration::from_secs(3);
    let mut w = busy.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut sent = 0usize;
        while Instant::now() < stop {
            w.write_all(&[b'x'; 100]).unwrap();
            sent += 100;
            std::thread::sleep(Duration::from_millis(50));
        }
        w.shutdown(Shutdown::Write).unwrap();
        sent
    });
    std::thread::sleep(Duration::from_millis(1500));
    // At the cap: the idle session (idle > --evict-after) makes room.
    round_trip(&srv, b"newcomer");
    assert!(
        closed_within(&mut idle, SOON),
        "the idle session was not ended"
    );
    let echoed = read_to_eof_within(&mut busy, SOON);
    assert_eq!(
        echoed.len(),
        writer.join().unwrap(),
        "the busy stream was cut"
    );
    assert_eq!(srv.counter("evicted"), 1);
}

#[test]
fn a_flood_from_one_address_spends_only_its_own_budget() {
    // B's two connections fit the global window only if A's refused
    // attempts did not count in it.
    let srv = Server::start(&["--rate", "2/60", "--global-rate", "4/60"]);
    for i in 0..10 {
        let mut s = srv.connect_from("127.0.0.2");
        let mut b = [0u8; 1];
        s.write_all(b"f").unwrap();
        let n = s.read(&mut b).unwrap_or(0);
        assert_eq!(n == 1, i < 2, "flood connection {i}");
    }
    for _ in 0..2 {
        let mut s = srv.connect_from("127.0.0.3");
        s.write_all(b"ok").unwrap();
        assert_eq!(read_exact_within(&mut s, 2, SOON), b"ok");
    }
    assert_eq!(srv.counter("refused_rate"), 8);
    assert_eq!(srv.counter("refused_global_rate"), 0);
}

#[test]
fn an_ipv4_client_of_a_dual_stack_socket_is_logged_as_ipv4() {
    let srv = Server::start(&["--listen", "[::]:0", "-v", "--deny", "127.0.0.2"]);
    // Under qemu-user a refused connection now and then closes without the
    // emulated server ever logging it or counting it in time (about 1 run in
    // 30 under parallel load, with the build issue 11 started from too;
    // never natively in 30; cause not found): what is checked here is the
    // line's form, so a second attempt is allowed there, and said.
    let attempts = if runner().is_empty() { 1 } else { 3 };
    for attempt in 1..=attempts {
        let mut refused = srv.connect_from("127.0.0.2");
        assert!(closed_within(&mut refused, SOON));
        if srv.wait_log_count("refused ", 1, Duration::from_secs(5)) == 1 {
            if attempt > 1 {
                eprintln!("the refusal was logged at attempt {attempt} (qemu-user)");
            }
            break;
        }
    }
    let mut s = srv.connect_from("127.0.0.1");
    s.write_all(b"v4").unwrap();
    assert_eq!(read_exact_within(&mut s, 2, SOON), b"v4");
    drop(s);
    assert_eq!(srv.wait_log_count("ended (", 1, SOON), 1, "{}", srv.log());
    let log = srv.log();
    assert!(!log.contains("::ffff:"), "{log}");
    assert!(log.contains("connection from 127.0.0.1:"), "{log}");
    assert!(log.contains("refused 127.0.0.2: denied"), "{log}");
}
