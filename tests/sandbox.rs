//! `--sandbox`: every child runs under the seccomp filter (`Seccomp: 2` in
//! /proc) in every echo mode; a forbidden call kills only that child, which
//! the parent counts and names; `on` and `off` do what they say. Under QEMU
//! user mode no filter can be installed (QEMU refuses them): `auto` must say
//! so once and serve, and the /proc checks are skipped with a message.

mod common;
use common::*;
use std::io::Write;

const REFUSED: &str = "sandbox: the kernel refused the seccomp filter";

/// Whether this server's children are filtered, from its start-up lines
/// (the refusal comes before "listening on").
fn filtered(srv: &Server, test: &str) -> bool {
    let log = srv.log();
    if log.contains(REFUSED) {
        eprintln!("{test}: no seccomp here (QEMU user mode?), skipping the filter checks: {log}");
        return false;
    }
    true
}

/// Echoes `n` pseudo-random bytes through `s`, writing from another thread
/// so neither side's window can stall the other.
fn echo_bulk(s: &mut std::net::TcpStream, n: usize) {
    let data = random_bytes(n as u64, n);
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
    let got = read_exact_within(s, n, SOON);
    writer.join().unwrap();
    assert_eq!(digest(&got), digest(&data), "{n} bytes came back changed");
}

#[test]
fn every_mode_serves_under_the_filter() {
    for mode in ["copy", "splice", "auto"] {
        let srv = Server::start(&["-v", "--echo", mode, "--idle-timeout", "2"]);
        let (mut s, child) = open_session(&srv, b"live");
        if filtered(&srv, mode) {
            assert_eq!(
                proc_status(child, "Seccomp").as_deref(),
                Some("2"),
                "{mode}"
            );
            // One filter more than its parent (a container may add its own
            // to both).
            let filters = |pid| -> u32 {
                proc_status(pid, "Seccomp_filters").map_or(0, |v| v.parse().unwrap_or(0))
            };
            assert_eq!(filters(child), filters(srv.pid) + 1, "{mode}");
        }
        // Past 64 KiB, so auto turns from splice to copy under the filter.
        echo_bulk(&mut s, 300_000);
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(read_to_eof_within(&mut s, SOON).is_empty(), "{mode}");
        // An idle session ends by its timeout, with the end logged.
        assert_eq!(srv.wait_children(0, SOON), 0, "{mode}");
        let (mut idle, _) = open_session(&srv, b"i");
        assert!(closed_within(&mut idle, SOON), "{mode}: idle not ended");
        round_trip(&srv, b"after");
        assert_eq!(srv.wait_children(0, SOON), 0, "{mode}");
        assert_eq!(srv.counter("idle_timeout"), 1, "{mode}: {}", srv.log());
        assert_eq!(srv.counter("killed"), 0, "{mode}: {}", srv.log());
        assert_eq!(srv.counter("killed_sandbox"), 0, "{mode}");
        assert_eq!(srv.wait_log_count("ended (eof)", 2, SOON), 2, "{mode}");
        // Said once at start-up, not once per child.
        assert!(srv.log().matches(REFUSED).count() <= 1, "{}", srv.log());
    }
}

#[cfg(feature = "sandbox-test")]
#[test]
fn a_forbidden_call_kills_only_that_child() {
    let srv = Server::start_env(&["-v"], &[("FORKECHO_TEST_SANDBOX_VIOLATE", "127.0.0.9")]);
    if !filtered(&srv, "forbidden call") {
        return;
    }
    let mut bad = srv.connect_from("127.0.0.9");
    let _ = bad.write_all(b"x");
    assert!(closed_within(&mut bad, SOON), "the violating child served");
    let log_has = |needle: &str| srv.wait_log_count(needle, 1, SOON) == 1;
    assert!(log_has("killed by the sandbox (SIGSYS)"), "{}", srv.log());
    // The line names the child that served 127.0.0.9.
    let log = srv.log();
    let child = log
        .lines()
        .find(|l| l.contains("connection from 127.0.0.9:"))
        .and_then(|l| l.rsplit("served by child ").next())
        .unwrap_or_else(|| panic!("no fork line: {log}"))
        .trim()
        .to_string();
    assert!(
        log.contains(&format!("child {child} killed by the sandbox")),
        "{log}"
    );
    // The server goes on serving, and counts the kill under both counters.
    round_trip(&srv, b"next client");
    assert_eq!(srv.wait_children(0, SOON), 0);
    assert_eq!(srv.counter("killed_sandbox"), 1, "{}", srv.log());
    assert_eq!(srv.counter("killed"), 1);
    assert_eq!(srv.counter("exited_ok"), 1);
}

#[test]
fn sandbox_on_serves_filtered_or_refuses_to_start() {
    let auto = Server::start(&[]);
    if filtered(&auto, "--sandbox on") {
        let srv = Server::start(&["--sandbox", "on"]);
        let (_s, child) = open_session(&srv, b"on");
        assert_eq!(proc_status(child, "Seccomp").as_deref(), Some("2"));
    } else {
        assert_one_line_error(
            &["--listen", "127.0.0.1:0", "--sandbox", "on"],
            1,
            &["--sandbox on: the kernel refused the seccomp filter"],
        );
    }
}

#[test]
fn sandbox_off_installs_nothing_and_says_nothing() {
    let srv = Server::start(&["--sandbox", "off"]);
    let (_s, child) = open_session(&srv, b"off");
    // No filter of ours: the child has exactly the filters its parent has
    // (none on a plain host; a container runtime may have put its own on
    // both).
    assert_eq!(
        proc_status(child, "Seccomp_filters"),
        proc_status(srv.pid, "Seccomp_filters")
    );
    assert_eq!(
        proc_status(child, "Seccomp"),
        proc_status(srv.pid, "Seccomp")
    );
    assert!(!srv.log().contains("sandbox"), "{}", srv.log());
    assert_one_line_error(
        &["--sandbox", "maybe"],
        2,
        &["--sandbox maybe: must be auto, on or off"],
    );
}

#[test]
fn inetd_mode_serves_under_the_filter() {
    let srv = activator(&["--inetd", "--accept"], &["--inetd", "-v"]);
    let (mut s, child) = open_session(&srv, b"inetd");
    // Each inetd process decides for itself: unfiltered only where the
    // kernel refused, which it then says (the line may reach the test's log
    // reader after the echo).
    let seccomp = proc_status(child, "Seccomp");
    if seccomp.as_deref() != Some("2") {
        assert_eq!(
            srv.wait_log_count(REFUSED, 1, SOON),
            1,
            "Seccomp {seccomp:?} and no refusal line: {}",
            srv.log()
        );
    }
    echo_bulk(&mut s, 100_000);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read_to_eof_within(&mut s, SOON).is_empty());
    assert_eq!(
        srv.wait_log_count("ended (eof)", 1, SOON),
        1,
        "{}",
        srv.log()
    );
    assert!(!srv.log().contains("SIGSYS"), "{}", srv.log());
}
