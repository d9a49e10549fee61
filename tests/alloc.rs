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
