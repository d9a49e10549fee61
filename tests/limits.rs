//! Session limits: `--idle-timeout` and `--max-session`, enforced in the
//! child with poll timeouts (no SO_RCVTIMEO, which QEMU user mode cannot read
//! back). Lower bounds on time are asserted (a limit must not fire early);
//! upper bounds are the generous SOON, never a tight timing.

mod common;
use common::*;
use std::io::Write;
use std::time::{Duration, Instant};

const MODES: [&str; 3] = ["auto", "splice", "copy"];

#[test]
fn idle_timeout_ends_a_silent_session_and_is_counted() {
    for mode in MODES {
        let srv = Server::start(&["--echo", mode, "--idle-timeout", "1", "-v"]);
        // The clock starts before the echo: the idle period begins after it.
        let t = Instant::now();
        let (mut s, child) = open_session(&srv, b"ping");
        assert!(
            closed_within(&mut s, SOON),
            "{mode}: idle session not ended"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{mode}: ended after {:?}, before the idle timeout",
            t.elapsed()
        );
        assert!(wait_reaped(child, SOON), "{mode}: child not reaped");
        assert_eq!(
            srv.wait_log_count("ended (idle timeout): 4 bytes echoed in ", 1, SOON),
            1,
            "{}",
            srv.log()
        );
        assert_eq!(srv.counter("idle_timeout"), 1);
        assert_eq!(srv.counter("exited_ok"), 0);
    }
}

#[test]
fn activity_keeps_a_session_past_the_idle_timeout() {
    let srv = Server::start(&["--idle-timeout", "1"]);
    let (mut s, child) = open_session(&srv, b"a");
    // 8 exchanges 400 ms apart: 3.2 s in all, never 1 s idle.
    for i in 0..8u8 {
        std::thread::sleep(Duration::from_millis(400));
        s.write_all(&[b'0' + i]).unwrap();
        assert_eq!(read_exact_within(&mut s, 1, SOON), [b'0' + i]);
    }
    assert!(proc_stat(child).is_some());
    assert_eq!(srv.counter("idle_timeout"), 0);
}

#[test]
fn idle_timeout_ends_a_peer_that_never_reads() {
    for mode in MODES {
        let srv = Server::start(&["--echo", mode, "--idle-timeout", "1"]);
        let (s, child) = open_session(&srv, b"x");
        // Fill both directions: the child's writes stall on our full receive
        // buffer, then its own receive buffer fills. No byte moves after.
        s.set_nonblocking(true).unwrap();
        let chunk = vec![7u8; 65536];
        let mut sent = 0usize;
        let stop = Instant::now() + SOON;
        let mut last_progress = Instant::now();
        while last_progress.elapsed() < Duration::from_millis(300) && Instant::now() < stop {
            match (&s).write(&chunk) {
                Ok(n) => {
                    sent += n;
                    last_progress = Instant::now();
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        assert!(sent > 65536, "{mode}: only {sent} bytes went out");
        assert!(
            wait_reaped(child, SOON),
            "{mode}: a stalled writer pinned its child"
        );
        assert_eq!(srv.counter("idle_timeout"), 1, "{mode}");
    }
}

#[test]
fn max_session_ends_a_busy_session() {
    for mode in MODES {
        let srv = Server::start(&[
            "--echo",
            mode,
            "--max-session",
            "2",
            "--idle-timeout",
            "0",
            "-v",
        ]);
        // The clock starts before the session does.
        let t = Instant::now();
        let (mut s, _child) = open_session(&srv, b"go");
        let mut echoed = 2usize;
        // Keep talking until the server hangs up.
        loop {
            assert!(t.elapsed() < SOON, "{mode}: session outlived --max-session");
            if s.write_all(b"more").is_err() {
                break;
            }
            if closed_within(&mut s, Duration::from_millis(200)) {
                break;
            }
            // closed_within consumed one byte of the echo; read the rest.
            let _ = read_exact_within(&mut s, 3, SOON);
            echoed += 4;
        }
        assert!(
            t.elapsed() >= Duration::from_millis(1900),
            "{mode}: ended after {:?}",
            t.elapsed()
        );
        assert_eq!(srv.wait_children(0, SOON), 0);
        assert_eq!(
            srv.wait_log_count("ended (session lifetime): ", 1, SOON),
            1,
            "{}",
            srv.log()
        );
        assert!(echoed > 2);
        assert_eq!(srv.counter("lifetime_end"), 1, "{mode}");
    }
}
