//! `--syslog`: one datagram per line to a syslog socket (a datagram socket
//! of ours standing in for /dev/log), nothing on stderr, and a reconnect
//! when syslogd restarts.

mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

fn recv_until(sock: &UnixDatagram, needle: &str, got: &mut Vec<String>) -> String {
    let deadline = Instant::now() + SOON;
    let mut buf = [0u8; 1024];
    loop {
        assert!(Instant::now() < deadline, "no {needle:?} in {got:?}");
        if let Ok(n) = sock.recv(&mut buf) {
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            got.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }
}

#[test]
fn lines_go_to_syslog_with_priorities_and_survive_a_restart() {
    let dir = temp_dir("syslog");
    let path = dir.join("log");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut cmd = Command::new(runner_and_bin()[0].clone());
    cmd.args(&runner_and_bin()[1..]).args([
        "--listen",
        "127.0.0.1:0",
        "-v",
        "--syslog",
        "--syslog-socket",
        path.to_str().unwrap(),
    ]);
    let mut got = vec![];
    // The address arrives by syslog, not stderr.
    let placeholder = "127.0.0.1:1".parse().unwrap();
    let mut srv = Server::spawn(cmd, Some(placeholder));
    let line = recv_until(&sock, "listening on ", &mut got);
    // daemon.info = 3 * 8 + 6
    assert!(line.starts_with("<30>forkecho["), "{line}");
    srv.addr = line.split("listening on ").nth(1).unwrap().parse().unwrap();
    round_trip(&srv, b"to syslog");
    let end = recv_until(&sock, "ended (eof)", &mut got);
    // daemon.debug = 3 * 8 + 7, no newline in a datagram.
    assert!(end.starts_with("<31>forkecho["), "{end}");
    assert!(end.contains(": 9 bytes echoed in "), "{end}");
    assert!(!end.ends_with('\n'));

    // syslogd restarts: a new socket at the same path.
    drop(sock);
    std::fs::remove_file(&path).unwrap();
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    round_trip(&srv, b"after restart");
    recv_until(&sock, "13 bytes echoed", &mut got);

    srv.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(srv.wait_exit(SOON).code(), Some(0));
    assert_eq!(srv.log(), "", "stderr must stay silent with --syslog");
}

#[test]
fn a_missing_syslog_socket_is_one_clear_line() {
    assert_one_line_error(
        &["--syslog", "--syslog-socket", "/nonexistent-forkecho/log"],
        1,
        &["--syslog: cannot connect to /nonexistent-forkecho/log: No such file or directory (ENOENT)"],
    );
}
