//! Shutdown, signals and logging under faults: no reset for a client that
//! is mid-stream, one line for a Ctrl-C, no signal an admin commonly sends
//! kills the server silently, a stalled log never stops it.

mod common;
use common::*;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Starts forkecho on port 0 without waiting for a "listening on" line
/// (with -q or --syslog there is none on stderr): ready once its socket
/// listens.
fn start_with_log_elsewhere(args: &[&str]) -> Server {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend(args);
    let mut srv = Server::spawn(command(&all), Some("127.0.0.1:0".parse().unwrap()));
    // The port from the server's own listening socket (its log may be
    // elsewhere): a probe connection would leave a child behind that a later
    // open_session could count, and a port probed free beforehand can be
    // taken by another process before the server binds it (seen in CI).
    let deadline = Instant::now() + SOON;
    loop {
        if let Some(port) = listening_port(srv.pid) {
            srv.addr.set_port(port);
            return srv;
        }
        assert!(Instant::now() < deadline, "not listening: {}", srv.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_mid_stream_gives_an_exact_prefix_and_a_clean_eof() {
    for mode in ["auto", "splice", "copy"] {
        let mut srv = Server::start(&["--echo", mode, "--shutdown-timeout", "30"]);
        let payload = random_bytes(9, 8 << 20);
        let mut s = srv.connect();
        let mut w = s.try_clone().unwrap();
        let sent = payload.clone();
        // The writer is faster than the reader: both directions are full
        // when the signal comes.
        let writer = std::thread::spawn(move || {
            let r = w.write_all(&sent);
            let _ = w.shutdown(Shutdown::Write);
            r
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let mut signalled = false;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(Instant::now() < deadline, "{mode}: no EOF");
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("{mode}: {e} after {} bytes: a reset", got.len()),
            }
            if !signalled && got.len() >= 1 << 20 {
                srv.signal(Signal::SIGTERM);
                signalled = true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(signalled, "{mode}: the stream ended before the signal");
        assert_eq!(got[..], payload[..got.len()], "{mode}: not an exact prefix");
        writer
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{mode}: the writer saw {e}"));
        assert_eq!(srv.wait_exit(SOON).code(), Some(0), "{}", srv.log());
        assert!(
            srv.log().contains("1 sessions ended, 0 killed"),
            "{}",
            srv.log()
        );
    }
}

#[test]
fn an_idle_session_gets_eof_at_once_on_sigterm() {
    let mut srv = Server::start(&[]);
    let (mut s, _) = open_session(&srv, b"idle");
    srv.signal(Signal::SIGTERM);
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).expect("EOF, not a reset"), 0);
    assert_eq!(srv.wait_exit(SOON).code(), Some(0));
}

#[test]
fn ctrl_c_to_the_process_group_is_one_line() {
    let mut cmd = command(&["--listen", "127.0.0.1:0"]);
    cmd.process_group(0);
    let mut srv = Server::spawn(cmd, None);
    let sessions: Vec<_> = (0..3)
        .map(|i| {
            let mut s = srv.connect();
            s.write_all(&[b'0' + i]).unwrap();
            assert_eq!(read_exact_within(&mut s, 1, SOON), [b'0' + i]);
            s
        })
        .collect();
    assert_eq!(srv.children().0.len(), 3);
    let before = srv.log().lines().count();
    nix::sys::signal::kill(Pid::from_raw(-srv.pid), Signal::SIGINT).unwrap();
    assert_eq!(srv.wait_exit(SOON).code(), Some(0));
    let log = srv.log();
    // (The allocation-counting build adds its own report lines.)
    let after: Vec<&str> = (log.lines().skip(before))
        .filter(|l| !l.contains("alloc-check"))
        .collect();
    assert_eq!(after.len(), 1, "{log}");
    assert!(
        after[0].contains("stopped by SIGINT: 3 sessions ended, 0 killed"),
        "{log}"
    );
    for mut s in sessions {
        assert!(closed_within(&mut s, SOON));
    }
}

#[test]
fn shutdown_timeout_0_is_asked_for_not_an_error() {
    let mut srv = start_with_log_elsewhere(&["-q", "--shutdown-timeout", "0"]);
    let (_s, _) = open_session(&srv, b"x");
    srv.signal(Signal::SIGTERM);
    assert_eq!(srv.wait_exit(SOON).code(), Some(0));
    let log = srv.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("alloc-check")).collect();
    assert!(lines.is_empty(), "-q shows errors only: {log}");
}

#[test]
fn every_common_signal_is_handled_and_said() {
    let mut srv = Server::start(&[]);
    srv.signal(Signal::SIGHUP);
    assert_eq!(srv.wait_log_count("status: ", 1, SOON), 1, "{}", srv.log());
    for (sig, line) in [
        (Signal::SIGUSR2, "ignoring SIGUSR2"),
        (Signal::SIGALRM, "ignoring SIGALRM"),
    ] {
        srv.signal(sig);
        assert_eq!(srv.wait_log_count(line, 1, SOON), 1, "{}", srv.log());
    }
    round_trip(&srv, b"still serving");
    srv.signal(Signal::SIGQUIT);
    assert_eq!(srv.wait_exit(SOON).code(), Some(0));
    assert!(srv.log().contains("stopped by SIGQUIT"), "{}", srv.log());
}

#[test]
fn a_log_nobody_reads_never_stops_the_server() {
    let mut child = command(&["--listen", "127.0.0.1:0", "-v"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    // Start-up lines (the sandbox's under QEMU) come before "listening on".
    let mut first = String::new();
    for _ in 0..10 {
        first.clear();
        log.read_line(&mut first).unwrap();
        if first.contains("listening on ") {
            break;
        }
    }
    let addr: std::net::SocketAddr = first
        .rsplit("listening on ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no 'listening on' line: {first}"));
    let pid = Pid::from_raw(child.id() as i32);
    // Two lines per connection with -v: far more than a pipe holds.
    for i in 0..1000 {
        let mut s = std::net::TcpStream::connect_timeout(&addr, SOON).unwrap();
        s.write_all(b"x").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let got = read_to_eof_within(&mut s, SOON);
        assert_eq!(got, b"x", "connection {i}");
    }
    // The logger reads again: one line says how many were lost, the status
    // line carries the total.
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = log.read_to_string(&mut all);
        all
    });
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(pid, Signal::SIGUSR1).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + SOON;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "server stuck after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = reader.join().unwrap();
    let dropped = all
        .lines()
        .find_map(|l| {
            l.split(" log lines dropped")
                .next()
                .filter(|_| l.contains("dropped:"))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no 'log lines dropped' line in {all}"));
    assert!(dropped > 0);
    let status = all
        .lines()
        .find(|l| l.contains("status: "))
        .expect("status line");
    let total: u64 = (status.split("log_dropped=").nth(1))
        .and_then(|v| v.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no log_dropped in {status}"));
    assert!(total >= dropped, "{status}");
}

#[test]
fn a_line_syslog_refuses_goes_to_stderr() {
    let dir = temp_dir("syslog-fallback");
    let path = dir.join("log");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(SOON)).unwrap();
    let srv =
        start_with_log_elsewhere(&["--syslog", "--syslog-socket", path.to_str().unwrap(), "-v"]);
    round_trip(&srv, b"logged");
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("forkecho["));
    // syslogd goes away for good: the lines must not vanish.
    drop(sock);
    std::fs::remove_file(&path).unwrap();
    round_trip(&srv, b"fallback");
    assert!(
        srv.wait_log_count("ended (eof)", 1, SOON) >= 1,
        "no line reached stderr: {}",
        srv.log()
    );
}

#[test]
fn help_and_version_on_a_full_disk_or_a_closed_pipe_never_crash() {
    for arg in ["--help", "--version"] {
        let out = command(&[arg])
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_one_line(
            out.status.code(),
            &err,
            1,
            &["No space left on device"],
            arg,
        );

        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        let out = command(&[arg])
            .stdout(w)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{arg} on a closed pipe");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "{arg}: quiet on EPIPE"
        );
    }
    assert_one_line_error(&["help"], 2, &["help"]);
}
