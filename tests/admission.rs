//! Admission control between accept and fork: access rules, rate limits,
//! connections per address. Each refusal is checked at its edge (N served,
//! N+1 refused), by exact counters, and by the absence of a fork for it.
//! Source addresses are chosen from 127.0.0.0/8, all loopback on Linux.

mod common;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A session from `src`, proven served by one echo.
fn served(srv: &Server, src: &str) -> TcpStream {
    let mut s = srv.connect_from(src);
    s.write_all(b"hi").unwrap();
    assert_eq!(read_exact_within(&mut s, 2, SOON), b"hi", "from {src}");
    s
}

/// A connection from `src` that must be refused: `expect` then EOF, and no
/// child for it.
fn refused(srv: &Server, src: &str, expect: &[u8]) {
    let accepted = srv.counter("accepted");
    let mut s = srv.connect_from(src);
    assert_eq!(read_to_eof_within(&mut s, SOON), expect, "from {src}");
    assert_eq!(
        srv.counter("accepted"),
        accepted,
        "a refused client was forked"
    );
}

#[test]
fn max_per_ip_edges_and_slot_release() {
    let srv = Server::start(&["--max-per-ip", "2", "--reject-message", "busy"]);
    let a = served(&srv, "127.0.0.1");
    let _b = served(&srv, "127.0.0.1");
    refused(&srv, "127.0.0.1", b"busy\r\n");
    // Another address has its own count.
    let _c = served(&srv, "127.0.0.2");
    assert_eq!(srv.children().0.len(), 3);

    // A slot comes back when its child ends normally...
    a.shutdown(std::net::Shutdown::Write).unwrap();
    drop(a);
    assert_eq!(srv.wait_children(2, SOON), 2);
    let d = served(&srv, "127.0.0.1");
    refused(&srv, "127.0.0.1", b"busy\r\n");

    // ...and when it is killed: the parent frees it on reap.
    let kids = srv.children().0;
    assert_eq!(kids.len(), 3);
    for k in kids {
        let _ = kill(Pid::from_raw(k), Signal::SIGKILL);
    }
    assert_eq!(srv.wait_children(0, SOON), 0);
    drop(d);
    let _e = served(&srv, "127.0.0.1");
    let _f = served(&srv, "127.0.0.1");
    refused(&srv, "127.0.0.1", b"busy\r\n");
    assert_eq!(srv.counter("refused_per_ip"), 3);
    assert_eq!(srv.counter("accepted"), 6);
    assert_eq!(srv.counter("killed"), 3);
}

#[test]
fn rules_apply_in_order_without_fork() {
    let srv = Server::start(&[
        "--deny",
        "127.0.0.2",
        "--allow",
        "127.0.0.0/30",
        "--reject-message",
        "never sent to a denied client",
        "-v",
    ]);
    served(&srv, "127.0.0.1");
    refused(&srv, "127.0.0.2", b"");
    served(&srv, "127.0.0.3");
    // Outside every rule, with an --allow present: refused.
    refused(&srv, "127.0.0.9", b"");
    assert_eq!(srv.counter("refused_deny"), 2);
    assert_eq!(srv.counter("accepted"), 2);
    assert_eq!(
        srv.wait_log_count("refused 127.0.0.2: denied by the access rules", 1, SOON),
        1,
        "{}",
        srv.log()
    );
}

#[test]
fn rules_see_ipv4_clients_of_an_ipv6_socket_as_ipv4() {
    // An IPv6 socket bound to the IPv4-mapped loopback receives IPv4 clients
    // as ::ffff:127.0.0.x, as a dual-stack [::] socket would.
    let srv = Server::start(&[
        "--listen",
        "[::ffff:127.0.0.1]:0",
        "--deny",
        "127.0.0.2/32",
        "--max-per-ip",
        "1",
    ]);
    let _a = served(&srv, "127.0.0.1");
    refused(&srv, "127.0.0.1", b"");
    refused(&srv, "127.0.0.2", b"");
    assert_eq!(srv.counter("refused_deny"), 1);
    assert_eq!(srv.counter("refused_per_ip"), 1);
}

#[test]
fn rate_per_address_refuses_until_the_window_passes() {
    let srv = Server::start(&["--rate", "3/3", "--reject-message", "slow down"]);
    let t0 = Instant::now();
    for _ in 0..3 {
        served(&srv, "127.0.0.1");
    }
    refused(&srv, "127.0.0.1", b"slow down\r\n");
    refused(&srv, "127.0.0.1", b"slow down\r\n");
    // Other addresses have their own window.
    served(&srv, "127.0.0.2");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "too slow to test a 3 s window"
    );
    // Refusals did not extend the window: it ends 3 s after it began.
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(t0.elapsed()) + Duration::from_millis(300),
    );
    served(&srv, "127.0.0.1");
    assert_eq!(srv.counter("refused_rate"), 2);
    assert_eq!(srv.counter("accepted"), 5);
}

#[test]
fn global_rate_counts_every_source() {
    let srv = Server::start(&["--global-rate", "2/60"]);
    served(&srv, "127.0.0.1");
    served(&srv, "127.0.0.2");
    refused(&srv, "127.0.0.3", b"");
    refused(&srv, "127.0.0.1", b"");
    assert_eq!(srv.counter("refused_global_rate"), 2);
    assert_eq!(srv.counter("accepted"), 2);
}

#[test]
fn reaching_the_cap_is_counted_once_per_episode() {
    let srv = Server::start(&["--max-children", "1"]);
    let a = served(&srv, "127.0.0.1");
    // Waits in the backlog: connected, not served.
    let mut b = srv.connect_from("127.0.0.1");
    b.write_all(b"queued").unwrap();
    assert!(silent_for(&b, Duration::from_millis(500)));
    drop(a);
    assert_eq!(read_exact_within(&mut b, 6, SOON), b"queued");
    assert_eq!(srv.counter("cap_reached"), 2);
}
