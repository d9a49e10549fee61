//! No heap after fork in the child, none in the parent's steady state.
//!
//! Needs `--features alloc-count`: the binary then counts its allocations and
//! each child reports how many it made after fork; the parent reports how
//! many it made after start-up when it stops.

mod common;
use common::*;
use nix::sys::signal::Signal;

fn counts(log: &str, who: &str) -> Vec<usize> {
    let key = format!("alloc-check: {who} made ");
    log.lines()
        .filter_map(|l| l.split(&key).nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

fn serve_and_stop(env: &[(&str, &str)], args: &[&str]) -> String {
    let mut srv = Server::start_env(args, env);
    for i in 0..50 {
        round_trip(&srv, format!("message {i} with some bytes").as_bytes());
    }
    // A reset session and a multi-turn session take other child paths.
    {
        let mut s = srv.connect();
        std::io::Write::write_all(&mut s, &random_bytes(1, 200_000)).unwrap();
    }
    assert_eq!(
        srv.wait_log_count("alloc-check: child", 51, SOON),
        51,
        "{}",
        srv.log()
    );
    // The status line is part of the parent's steady state too.
    srv.signal(Signal::SIGUSR1);
    assert_eq!(srv.wait_log_count("status:", 1, SOON), 1, "{}", srv.log());
    srv.signal(Signal::SIGTERM);
    assert_eq!(srv.wait_exit(SOON).code(), Some(0));
    srv.log()
}

#[test]
fn child_path_and_parent_loop_do_not_allocate() {
    // Metrics writes, on the timer and on SIGUSR1: the parent's steady state.
    let dir = temp_dir("alloc-metrics");
    let file = dir.join("forkecho.prom");
    let metrics = [
        "--metrics-file",
        file.to_str().unwrap(),
        "--metrics-interval",
        "1",
    ];
    for mode in ["auto", "splice", "copy"] {
        let log = serve_and_stop(&[], &[&["-v", "--echo", mode][..], &metrics].concat());
        assert!(file.exists(), "{mode}: no metrics file");
        let child = counts(&log, "child");
        assert_eq!(child.len(), 51, "{log}");
        assert!(
            child.iter().all(|&n| n == 0),
            "{mode}: child allocations after fork: {child:?}"
        );
        assert_eq!(counts(&log, "parent"), vec![0], "{mode}: {log}");
    }
}

#[test]
fn the_check_sees_an_allocation_in_the_child() {
    // The negative control: the same run with one Box::new added to the child
    // path must be caught, or the test above proves nothing.
    let log = serve_and_stop(&[("FORKECHO_TEST_ALLOC_IN_CHILD", "1")], &[]);
    let child = counts(&log, "child");
    assert_eq!(child.len(), 51, "{log}");
    assert!(
        child.iter().all(|&n| n >= 1),
        "allocation not detected: {child:?}"
    );
}

#[test]
fn admission_refusals_and_session_limits_do_not_allocate() {
    let mut srv = Server::start(&[
        "-v",
        "--max-per-ip",
        "1",
        "--rate",
        "1000/60",
        "--global-rate",
        "1000/60",
        "--deny",
        "127.0.0.9",
        "--reject-message",
        "busy",
        "--idle-timeout",
        "1",
        // Failing metrics writes (and their log line) are steady state too.
        "--metrics-file",
        "/nonexistent-forkecho-dir/forkecho.prom",
        "--metrics-interval",
        "1",
    ]);
    // Held until the idle timeout ends it.
    let mut held = srv.connect_from("127.0.0.1");
    std::io::Write::write_all(&mut held, b"x").unwrap();
    assert_eq!(read_exact_within(&mut held, 1, SOON), b"x");
    for src in ["127.0.0.1", "127.0.0.9"] {
        let mut s = srv.connect_from(src);
        let _ = read_to_eof_within(&mut s, SOON);
    }
    for i in 2..12 {
        let mut s = srv.connect_from(&format!("127.0.1.{i}"));
        std::io::Write::write_all(&mut s, b"ok").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_to_eof_within(&mut s, SOON), b"ok");
    }
    assert!(closed_within(&mut held, SOON));
    assert_eq!(srv.wait_log_count("alloc-check: child", 11, SOON), 11);
    assert_eq!(srv.counter("refused_per_ip"), 1);
    assert_eq!(srv.counter("refused_deny"), 1);
    assert_eq!(srv.counter("idle_timeout"), 1);
    assert!(
        srv.log().contains("cannot open its directory"),
        "{}",
        srv.log()
    );
    srv.signal(Signal::SIGTERM);
    assert_eq!(srv.wait_exit(SOON).code(), Some(0));
    let log = srv.log();
    let child = counts(&log, "child");
    assert_eq!(child.len(), 11, "{log}");
    assert!(child.iter().all(|&n| n == 0), "{child:?}");
    assert_eq!(counts(&log, "parent"), vec![0], "{log}");
}

#[test]
fn the_udp_echo_and_its_refusals_do_not_allocate() {
    let mut srv = Server::start(&[
        "-v",
        "--udp",
        "0.0.0.0:0",
        "--udp",
        "[::1]:0",
        "--udp-buffer",
        "8192",
        "--deny",
        "127.0.0.9",
        "--rate",
        "1000/60",
    ]);
    let addrs = udp_addrs(&srv, 2);
    let v4: std::net::SocketAddr = format!("127.0.0.2:{}", addrs[0].port()).parse().unwrap();
    let c = udp_client("127.0.0.1:0");
    let c6 = udp_client("[::1]:0");
    for n in [0, 1, 1472, 8192] {
        let p = random_bytes(n as u64, n);
        assert_eq!(udp_echo(&c, v4, &p).0, p);
        assert_eq!(udp_echo(&c6, addrs[1], &p).0, p);
    }
    // Every way of not answering: too long, a service port, port 0, a
    // reserved source, a broadcast, the access rules.
    c.send_to(&[0u8; 8193], v4).unwrap();
    udp_client("127.0.0.1:19").send_to(b"x", v4).unwrap();
    let std::net::SocketAddr::V4(to) = v4 else {
        unreachable!()
    };
    raw_udp_v4("127.0.0.1".parse().unwrap(), 0, to, b"x");
    raw_udp_v4("224.0.0.9".parse().unwrap(), 5000, to, b"x");
    let b = udp_client("127.0.0.1:0");
    b.set_broadcast(true).unwrap();
    let bcast = format!("127.255.255.255:{}", addrs[0].port());
    b.send_to(b"x", bcast.as_str()).unwrap();
    udp_client("127.0.0.9:0").send_to(b"x", v4).unwrap();
    for name in [
        "udp_too_long",
        "udp_refused_port",
        "udp_refused_port0",
        "udp_refused_source",
        "udp_refused_dest",
        "udp_refused_deny",
    ] {
        assert_eq!(wait_counter(&srv, name, 1), 1, "{name}: {}", srv.log());
    }
    assert_eq!(srv.counter("udp_echoed"), 8);
    srv.signal(Signal::SIGTERM);
    assert_eq!(srv.wait_exit(SOON).code(), Some(0));
    let log = srv.log();
    assert_eq!(counts(&log, "parent"), vec![0], "{log}");
}
