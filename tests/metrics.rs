//! `--metrics-file`: the file, read by a real Prometheus text-format parser
//! (`prometheus_client`, through tests/prom.py), holds the exact counters of a
//! known sequence of connections; it is replaced on a timer, on SIGUSR1 and at
//! shutdown, never seen half-written, and a write that fails is counted while
//! the server goes on serving.

mod common;
use common::*;
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The last series of the file: a read that has it has the whole file.
const LAST: &str = "forkecho_metrics_write_failed_total";

/// Runs tests/prom.py with `args`; bounded in time.
fn prom(args: &[&str], within: Duration) -> Output {
    let mut child = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/prom.py"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/toolchain.sh ensure_host installs prometheus-client)");
    let deadline = Instant::now() + within;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("prom.py {args:?} did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("prom.py output")
}

/// Every sample in the file, as parsed: `name{labels}` to value.
fn scrape(path: &Path) -> BTreeMap<String, String> {
    let out = prom(&["read", path.to_str().unwrap()], SOON);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "prom.py read failed: {err}");
    let text = String::from_utf8(out.stdout).unwrap();
    let pairs = text
        .lines()
        .map(|l| l.rsplit_once(' ').expect("sample line"));
    pairs.map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The samples the server must export, with these values, and no others
/// (the start time is checked apart).
fn expected(
    active: u64,
    accepted: u64,
    (ok, killed, stopped): (u64, u64, u64),
    deny: u64,
    failed: u64,
) -> Vec<(String, String)> {
    let info = format!(
        "forkecho_info{{target=\"{}\",version=\"{}\"}}",
        built_target(),
        env!("CARGO_PKG_VERSION")
    );
    let ended = |cause: &str, v: u64| {
        (
            format!("forkecho_sessions_ended_total{{cause=\"{cause}\"}}"),
            v,
        )
    };
    let refused =
        |reason: &str, v: u64| (format!("forkecho_refused_total{{reason=\"{reason}\"}}"), v);
    let plain = |name: &str, v: u64| (format!("forkecho_{name}"), v);
    [
        (info, 1),
        plain("sessions_active", active),
        plain("accepted_total", accepted),
        ended("ok", ok),
        ended("error", 0),
        ended("idle_timeout", 0),
        ended("max_session", 0),
        ended("killed", killed),
        ended("stopped", stopped),
        refused("deny", deny),
        refused("global_rate", 0),
        refused("rate", 0),
        refused("per_ip", 0),
        plain("fork_failed_total", 0),
        plain("dropped_no_fd_total", 0),
        plain("accept_retried_total", 0),
        plain("accept_paused_total", 0),
        plain("cap_reached_total", 0),
        plain("evicted_total", 0),
        plain("sandbox_killed_total", 0),
        plain("log_dropped_total", 0),
        plain("metrics_write_failed_total", failed),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect()
}

/// The target the server binary reports in `--version`.
fn built_target() -> String {
    let (_, out, _) = run_to_end(&["--version"]);
    let t = out.split('(').nth(1).and_then(|r| r.split(')').next());
    t.expect("target in --version").to_string()
}

/// The scrape without the start time, which must be within `started`.
fn check(path: &Path, started: (u64, u64), want: Vec<(String, String)>) {
    let mut got = scrape(path);
    let start: u64 = got
        .remove("forkecho_start_time_seconds")
        .expect("forkecho_start_time_seconds")
        .parse()
        .unwrap();
    assert!(
        started.0 <= start && start <= started.1,
        "start {start} not in {started:?}"
    );
    let want: BTreeMap<String, String> = want.into_iter().collect();
    assert_eq!(got, want);
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn wait_for_file(path: &Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while !path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// forkecho with `args` under `umask 077` (as a systemd unit's UMask=0077),
/// so the test sees whether the file still comes out readable by others.
fn start_umask_077(args: &[&str]) -> Server {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 077; exec \"$@\"", "sh"]);
    cmd.args(runner_and_bin())
        .args(["--listen", "127.0.0.1:0"])
        .args(args);
    Server::spawn(cmd, None)
}

#[test]
fn counters_of_a_known_sequence_at_start_on_sigusr1_and_at_shutdown() {
    let dir = temp_dir("metrics-counts");
    let file = dir.join("forkecho.prom");
    let path = file.to_str().unwrap();
    let t0 = unix_now();
    let mut srv = start_umask_077(&[
        "--metrics-file",
        path,
        "--metrics-interval",
        "3600",
        "--deny",
        "127.0.0.2",
    ]);
    let started = (t0, unix_now() + 1);
    assert!(
        wait_for_file(&file, SOON),
        "no file at start-up: {}",
        srv.log()
    );
    check(&file, started, expected(0, 0, (0, 0, 0), 0, 0));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644, "mode {mode:o} under umask 077");

    for i in 0..3 {
        round_trip(&srv, format!("echo {i}").as_bytes());
    }
    let mut denied = srv.connect_from("127.0.0.2");
    assert_eq!(read_to_eof_within(&mut denied, SOON), b"");
    // Echoed is not yet reaped: wait, so the next child is the only one.
    assert_eq!(srv.wait_children(0, SOON), 0);
    let (_victim_conn, victim) = open_session(&srv, b"k");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    assert_eq!(srv.wait_children(0, SOON), 0);
    let (_held, child) = open_session(&srv, b"held");
    // The directory descriptor is the parent's alone.
    let dir_text = dir.to_str().unwrap();
    assert!(
        fds(srv.pid).iter().any(|(_, t)| t == dir_text),
        "{:?}",
        fds(srv.pid)
    );
    assert!(
        !fds(child).iter().any(|(_, t)| t.starts_with(dir_text)),
        "{:?}",
        fds(child)
    );
    // The status line comes after the file is in place.
    srv.status();
    check(&file, started, expected(1, 5, (3, 1, 0), 1, 0));

    // Shutdown: the held session ends cleanly, counted as stopped.
    srv.signal(Signal::SIGTERM);
    assert_eq!(srv.wait_exit(SOON).code(), Some(0), "{}", srv.log());
    check(&file, started, expected(0, 5, (3, 1, 1), 1, 0));
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, ["forkecho.prom"], "temporary file left behind");
}

#[test]
fn rewritten_on_the_interval_with_nothing_else_happening() {
    let dir = temp_dir("metrics-timer");
    let file = dir.join("forkecho.prom");
    let srv = Server::start(&[
        "--metrics-file",
        file.to_str().unwrap(),
        "--metrics-interval",
        "1",
    ]);
    assert!(
        wait_for_file(&file, SOON),
        "no file at start-up: {}",
        srv.log()
    );
    // No client, no signal: only the loop's timer can bring it back.
    for _ in 0..2 {
        std::fs::remove_file(&file).unwrap();
        assert!(
            wait_for_file(&file, Duration::from_millis(2500)),
            "not rewritten after 2.5 s"
        );
    }
    assert_eq!(srv.log().matches("status:").count(), 0);
}

#[test]
fn readers_never_see_a_partial_file() {
    let dir = temp_dir("metrics-atomic");
    let file = dir.join("forkecho.prom");
    let path = file.to_str().unwrap().to_string();
    let srv = Server::start(&["--metrics-file", &path, "--metrics-interval", "1"]);
    assert!(wait_for_file(&file, SOON));
    let reader =
        std::thread::spawn(move || prom(&["hammer", &path, "3", &format!("{LAST} 0")], SOON * 2));
    // Rewrites as fast as the loop takes them, with sessions changing the
    // text between them.
    let deadline = Instant::now() + Duration::from_millis(2800);
    let mut n = 0;
    while Instant::now() < deadline {
        srv.signal(Signal::SIGUSR1);
        if n % 20 == 0 {
            round_trip(&srv, b"change the counters");
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = reader.join().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{report}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("prom.py hammer: {report}");
    let versions: u32 = report
        .trim()
        .rsplit("versions=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // A floor, not a rate: a loaded QEMU host rewrites far less often, and
    // (inode, mtime) pairs can repeat, so this undercounts.
    assert!(versions >= 3, "only {versions} versions seen: {report}");
    round_trip(&srv, b"still serving");
}

#[test]
fn a_missing_directory_costs_counted_failures_not_the_server() {
    let dir = temp_dir("metrics-missing");
    let sub = dir.join("later");
    let file = sub.join("forkecho.prom");
    let srv = Server::start(&[
        "--metrics-file",
        file.to_str().unwrap(),
        "--metrics-interval",
        "3600",
    ]);
    round_trip(&srv, b"serving without the directory");
    assert_eq!(srv.wait_children(0, SOON), 0);
    srv.status();
    // Start-up and SIGUSR1: two failures, one log line (rate-limited).
    let log = srv.log();
    assert_eq!(
        log.matches("cannot open its directory: No such file or directory (ENOENT)")
            .count(),
        1,
        "{log}"
    );
    // The directory appears (a partition mounted late): the next write works
    // and tells how many did not.
    std::fs::create_dir(&sub).unwrap();
    srv.status();
    let got = scrape(&file);
    assert_eq!(got.get(LAST).map(String::as_str), Some("2"), "{got:?}");
    assert_eq!(
        got.get("forkecho_sessions_ended_total{cause=\"ok\"}")
            .map(String::as_str),
        Some("1")
    );
}

#[test]
fn a_directory_the_dropped_user_cannot_write_is_counted() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: --user test skipped");
        return;
    }
    let dir = temp_dir("metrics-readonly");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.join("forkecho.prom");
    let args = [
        "--user",
        "nobody",
        "--metrics-file",
        file.to_str().unwrap(),
        "--metrics-interval",
        "3600",
    ];
    let srv = Server::start(&args);
    srv.status();
    round_trip(&srv, b"serving");
    assert!(!file.exists());
    let log = srv.log();
    assert_eq!(
        log.matches("cannot create the temporary file: Permission denied (EACCES)")
            .count(),
        1,
        "{log}"
    );
    // Made writable: the next write lands, as nobody, with the count.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    srv.status();
    let got = scrape(&file);
    assert_eq!(got.get(LAST).map(String::as_str), Some("2"), "{got:?}");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), nobody.uid.as_raw());
}
