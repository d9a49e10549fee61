//! Activation modes and readiness, each with a real activator or reader:
//! systemd socket activation (`systemd-socket-activate`, Debian package
//! `systemd`), inetd mode (`systemd-socket-activate --inetd --accept`),
//! `NOTIFY_SOCKET` (a datagram socket of ours, as systemd's), `--ready-fd`.

mod common;
use common::*;
use nix::sys::signal::Signal;
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

#[test]
fn socket_activation_serves_the_passed_socket() {
    let mut srv = activator(&[], &["-v"]);
    let port = srv.addr.port();
    // The first client makes the activator exec forkecho, which finds the
    // client waiting on the passed socket.
    round_trip(&srv, b"activated");
    round_trip(&srv, b"again");
    assert_eq!(
        srv.wait_log_count(&format!("listening on 127.0.0.1:{port}"), 1, SOON),
        1,
        "{}",
        srv.log()
    );
    assert_eq!(srv.wait_log_count("ended (eof)", 2, SOON), 2);
    // The activator exec'd forkecho in place: the pid is the server's.
    srv.signal(Signal::SIGTERM);
    assert_eq!(srv.wait_exit(SOON).code(), Some(0));
    assert!(srv.log().contains("stopped"));
}

/// Runs forkecho through `sh -c`, so `$$` (the shell, which then execs
/// forkecho in place) can be LISTEN_PID.
fn via_shell(script: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{script} \"$@\""))
        .arg("sh")
        .args(runner_and_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_socket_activation_environment_is_one_clear_line() {
    for (script, want) in [
        (
            "LISTEN_PID=$$ LISTEN_FDS=abc exec",
            "LISTEN_FDS=abc: expected 1..=16 descriptors",
        ),
        (
            "exec 3</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec",
            "LISTEN_FDS: descriptor 3 is not a socket",
        ),
        (
            "LISTEN_PID=x LISTEN_FDS=1 exec",
            "LISTEN_PID=x: not a process id",
        ),
    ] {
        let (code, err) = via_shell(script, &[]);
        assert_one_line(code, &err, 1, &[want], script);
    }
}

#[test]
fn listen_fds_for_another_process_are_ignored() {
    // LISTEN_PID=1 is not us: bind as usual.
    let srv = Server::start_env(&[], &[("LISTEN_PID", "1"), ("LISTEN_FDS", "1")]);
    round_trip(&srv, b"standalone");
    assert!(srv.log().contains("ignoring LISTEN_FDS"), "{}", srv.log());
}

#[test]
fn inetd_mode_serves_one_connection_per_process() {
    let srv = activator(&["--inetd", "--accept"], &["--inetd", "-v"]);
    round_trip(&srv, b"first");
    let all: Vec<u8> = (0..=255u8).collect();
    round_trip(&srv, &all);
    assert_eq!(
        srv.wait_log_count("ended (eof)", 2, SOON),
        2,
        "{}",
        srv.log()
    );
    // No listener of its own.
    assert!(!srv.log().contains("listening on"), "{}", srv.log());
}

#[test]
fn inetd_mode_keeps_log_lines_out_of_a_socket_on_stderr() {
    // BSD inetd style: the socket is 0, 1 and 2. A log line on stderr would
    // land in the client's stream: the refusal line for a denied client,
    // which is written before the close.
    for (args, payload, want) in [
        (
            &["--inetd", "-v"][..],
            &b"only these bytes"[..],
            &b"only these bytes"[..],
        ),
        (&["--inetd", "-v", "--deny", "127.0.0.1"], b"", b""),
    ] {
        let srv = spawn_activator(|port| {
            let mut cmd = Command::new("systemd-socket-activate");
            cmd.args(["--inetd", "--accept", "-l", &format!("127.0.0.1:{port}")])
                .args(["sh", "-c", "exec \"$@\" 2>&1", "sh"])
                .args(runner_and_bin())
                .args(args);
            cmd
        });
        let mut s = srv.connect();
        s.write_all(payload).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_eof_within(&mut s, SOON), want, "{args:?}");
    }
}

#[test]
fn inetd_mode_applies_the_access_rules() {
    let srv = activator(
        &["--inetd", "--accept"],
        &["--inetd", "--deny", "127.0.0.1"],
    );
    let mut s = srv.connect();
    assert_eq!(read_to_eof_within(&mut s, SOON), b"");
    assert_eq!(
        srv.wait_log_count("refused 127.0.0.1: denied by the access rules", 1, SOON),
        1,
        "{}",
        srv.log()
    );
}

#[test]
fn inetd_mode_refuses_what_it_cannot_do() {
    assert_one_line_error(
        &["--inetd"],
        1,
        &["--inetd: descriptor 0 is not a connected socket"],
    );
    assert_one_line_error(
        &["--inetd", "--rate", "1/1"],
        2,
        &["--rate needs the listening server"],
    );
}

#[test]
fn notify_socket_gets_ready_and_stopping() {
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(SOON)).unwrap();
    let mut srv = Server::start_env(&[], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    round_trip(&srv, b"notified");
    srv.signal(Signal::SIGTERM);
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(srv.wait_exit(SOON).code(), Some(0));
}

#[test]
fn notify_socket_may_be_abstract() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("forkecho-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(SOON)).unwrap();
    let _srv = Server::start_env(&[], &[("NOTIFY_SOCKET", &format!("@{name}"))]);
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");
}

#[test]
fn ready_fd_gets_the_port_and_is_closed() {
    let dir = temp_dir("ready");
    let file = dir.join("ready");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("exec \"$@\" 5>{}", file.display()))
        .arg("sh")
        .args(runner_and_bin())
        .args(["--listen", "127.0.0.1:0", "--ready-fd", "5"]);
    let srv = Server::spawn(cmd, None);
    let want = format!("{}\n", srv.addr.port());
    let deadline = std::time::Instant::now() + SOON;
    while std::fs::read_to_string(&file).unwrap_or_default() != want {
        assert!(std::time::Instant::now() < deadline, "no readiness line");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Closed after writing: soon no descriptor of the server points at it.
    // The line is visible between the write and the close, so look until
    // the deadline rather than once (CI once listed the descriptors there).
    let target = file.to_string_lossy().into_owned();
    let deadline = std::time::Instant::now() + SOON;
    while fds(srv.pid).iter().any(|(_, t)| *t == target) {
        assert!(
            std::time::Instant::now() < deadline,
            "still open: {:?}",
            fds(srv.pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    round_trip(&srv, b"ready");
}

#[test]
fn ready_fd_must_be_open() {
    let fd = closed_fd().to_string();
    assert_one_line_error(
        &["--listen", "127.0.0.1:0", "--ready-fd", &fd],
        1,
        &[&format!("--ready-fd {fd}: Bad file descriptor (EBADF)")],
    );
    // Checked before anything is opened: the syslog socket cannot take the
    // number first.
    assert_one_line_error(
        &[
            "--syslog",
            "--syslog-socket",
            "/nonexistent-forkecho/log",
            "--ready-fd",
            &fd,
        ],
        1,
        &[&format!("--ready-fd {fd}: Bad file descriptor (EBADF)")],
    );
}

#[test]
fn ready_fd_may_not_be_a_passed_socket() {
    // Today's main closed its own listener this way and hung.
    let port = free_port();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-l", &format!("127.0.0.1:{port}")])
        .args(runner_and_bin())
        .args(["--ready-fd", "3"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    // The activator execs forkecho on the first connection.
    let deadline = std::time::Instant::now() + SOON;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "activator not listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id() as i32;
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    let deadline = std::time::Instant::now() + SOON;
    while !waiter.is_finished() {
        if std::time::Instant::now() > deadline {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            panic!("forkecho --ready-fd 3 under LISTEN_FDS=1 hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = waiter.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let err: String = err.lines().filter(|l| l.contains("forkecho")).collect();
    assert_one_line(
        out.status.code(),
        &err,
        2,
        &["--ready-fd 3: is a socket passed by LISTEN_FDS"],
        "--ready-fd 3 under LISTEN_FDS=1",
    );
}

#[test]
fn notify_socket_path_works_under_chroot() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: --chroot needs root");
        return;
    }
    let dir = temp_dir("notify-chroot");
    let jail = dir.join("jail");
    std::fs::create_dir(&jail).unwrap();
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(SOON)).unwrap();
    let mut srv = Server::start_env(
        &["--chroot", jail.to_str().unwrap()],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    srv.signal(Signal::SIGTERM);
    let n = sock.recv(&mut buf).expect("STOPPING=1 after the chroot");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(srv.wait_exit(SOON).code(), Some(0));
}

#[test]
fn inetd_idle_timeout_is_not_a_usage_error() {
    let mut srv = activator(
        &["--inetd", "--accept"],
        &["--inetd", "-v", "--idle-timeout", "1"],
    );
    let mut s = srv.connect();
    assert_eq!(read_to_eof_within(&mut s, SOON), b"");
    assert_eq!(
        srv.wait_log_count("ended (idle timeout)", 1, SOON),
        1,
        "{}",
        srv.log()
    );
    // The activator logs each instance's exit status: 0 for a session
    // that ended as sessions do (2 is the usage-error status).
    assert_eq!(srv.wait_log_count("died with code", 1, SOON), 1);
    assert!(srv.log().contains("died with code 0"), "{}", srv.log());
    srv.signal(Signal::SIGTERM);
    let _ = srv.wait_exit(SOON);
}
