//! Command line and start-up failures: one clear line, a non-zero exit,
//! never a panic.

mod common;
use common::*;
use std::net::TcpListener;

#[test]
fn bad_values_give_one_line_and_exit_2() {
    assert_one_line_error(
        &["--max-children", "0"],
        2,
        &["--max-children 0", "1..=1024"],
    );
    assert_one_line_error(&["--max-children", "many"], 2, &["--max-children"]);
    assert_one_line_error(&["--max-children", "-1"], 2, &["--max-children"]);
    assert_one_line_error(&["--buffer-size", "100"], 2, &["--buffer-size 100"]);
    assert_one_line_error(&["--buffer-size", "2000000"], 2, &["--buffer-size"]);
    assert_one_line_error(&["--backlog", "70000"], 2, &["--backlog"]);
    assert_one_line_error(&["--shutdown-timeout", "x"], 2, &["--shutdown-timeout"]);
    assert_one_line_error(
        &["--listen", "127.0.0.1"],
        2,
        &["--listen 127.0.0.1", "ADDR:PORT"],
    );
    assert_one_line_error(&["--listen", "localhost:7"], 2, &["localhost:7"]);
    assert_one_line_error(&["--listen", "127.0.0.1:99999"], 2, &["127.0.0.1:99999"]);
    assert_one_line_error(&["--listen"], 2, &["--listen"]);
    assert_one_line_error(&["--frobnicate"], 2, &["--frobnicate"]);
    assert_one_line_error(&["-v", "-q"], 2, &["--verbose", "--quiet"]);
}

#[test]
fn address_in_use_names_the_address_and_reason() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_one_line_error(&["--listen", &addr], 1, &[&addr, "in use (EADDRINUSE)"]);
}

#[test]
fn address_not_on_this_host_is_refused_clearly() {
    // TEST-NET-1: never a local address; bind fails without sending anything.
    assert_one_line_error(
        &["--listen", "192.0.2.1:7007"],
        1,
        &["192.0.2.1:7007", "EADDRNOTAVAIL"],
    );
}

#[test]
fn second_listener_failing_is_reported_too() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_one_line_error(
        &["--listen", "127.0.0.1:0", "--listen", &addr],
        1,
        &[&addr, "EADDRINUSE"],
    );
}

#[test]
fn privileged_port_as_unprivileged_user_is_permission_denied() {
    let start: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if start <= 1 {
        eprintln!(
            "skipped: this kernel lets anyone bind port 1 (ip_unprivileged_port_start={start})"
        );
        return;
    }
    let mut cmd = vec!["--listen", "127.0.0.1:1"];
    let runner = runner();
    let bin = bin();
    let as_root = nix::unistd::geteuid().is_root();
    let mut full: Vec<&str> = vec![];
    if as_root {
        // Drop to nobody with util-linux setpriv; the server sees EACCES.
        full.extend(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    }
    full.extend(runner.iter().map(String::as_str));
    full.push(&bin);
    full.append(&mut cmd);
    let prog = if as_root { "setpriv" } else { full.remove(0) };
    let out = std::process::Command::new(prog)
        .args(&full)
        .output()
        .expect("spawn");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot bind 127.0.0.1:1: Permission denied (EACCES)"),
        "{err}"
    );
}

#[test]
fn version_names_version_and_target() {
    let (st, out, err) = run_to_end(&["--version"]);
    assert!(st.success(), "{err}");
    // A harness built for another target than the binary says which to expect.
    let target =
        std::env::var("FORKECHO_EXPECT_TARGET").unwrap_or_else(|_| env!("FORKECHO_TARGET").into());
    assert_eq!(
        out,
        format!("forkecho {} ({target})\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_every_option() {
    let (st, out, _) = run_to_end(&["--help"]);
    assert!(st.success());
    for opt in [
        "--listen",
        "--max-children",
        "--backlog",
        "--buffer-size",
        "--shutdown-timeout",
        "--verbose",
        "--quiet",
        "--version",
        "--help",
    ] {
        assert!(out.contains(opt), "--help lacks {opt}: {out}");
    }
}
