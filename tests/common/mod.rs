//! Shared test helpers: start the real `forkecho` binary (directly, or through
//! a QEMU user-mode runner for cross builds) on loopback port 0, talk to it
//! with deadlines, and inspect its process tree through /proc.
//!
//! The binary is `FORKECHO_BIN` when set (e.g. the release ARM build), else
//! the one cargo built for this test. The runner is `FORKECHO_RUNNER` when
//! set (may be empty for native, e.g. on a Pi), else the QEMU command for the
//! target the test itself was built for (it then runs under that emulator too).

#![allow(dead_code)]

use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous bound for anything that should happen "at once"; QEMU is slow.
pub const SOON: Duration = Duration::from_secs(15);

pub fn bin() -> String {
    std::env::var("FORKECHO_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_forkecho").to_string())
}

pub fn runner() -> Vec<String> {
    if let Ok(r) = std::env::var("FORKECHO_RUNNER") {
        return r.split_whitespace().map(String::from).collect();
    }
    // By the triple this harness was built for (build.rs records it), as in
    // .cargo/config.toml: ARMv6 runs on the Pi 1 core so that any ARMv7-only
    // instruction faults.
    let target = env!("FORKECHO_TARGET");
    let r: &[&str] = if cfg!(target_arch = "x86_64") {
        &[]
    } else if target.starts_with("armv7") {
        &["qemu-arm"]
    } else if target.starts_with("arm-") {
        &["qemu-arm", "-cpu", "arm1176"]
    } else if target.starts_with("aarch64") {
        &["qemu-aarch64"]
    } else {
        &[]
    };
    // Natively on a board (no emulator installed) the binary runs as is.
    let on_path = |prog: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
    };
    match r.first() {
        Some(prog) if on_path(prog) => r.iter().map(|s| s.to_string()).collect(),
        _ => vec![],
    }
}

/// A `Command` running forkecho with `args`, through the runner if any.
pub fn command(args: &[&str]) -> Command {
    let r = runner();
    let mut c = if r.is_empty() {
        Command::new(bin())
    } else {
        let mut c = Command::new(&r[0]);
        c.args(&r[1..]).arg(bin());
        c
    };
    c.args(args);
    c
}

/// Runs forkecho to completion (for command-line errors); bounded in time.
pub fn run_to_end(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn forkecho");
    let deadline = Instant::now() + SOON;
    loop {
        if let Some(_st) = child.try_wait().expect("try_wait") {
            let out = child.wait_with_output().expect("output");
            return (
                out.status,
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("forkecho {args:?} did not exit within {SOON:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Server {
    child: Option<Child>,
    pub pid: i32,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts forkecho on 127.0.0.1:0 (unless `args` has `--listen`) and
    /// waits for its "listening on" line.
    pub fn start(args: &[&str]) -> Server {
        Self::start_env(args, &[])
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut all: Vec<&str> = Vec::new();
        if !args.contains(&"--listen") {
            all.extend(["--listen", "127.0.0.1:0"]);
        }
        all.extend(args);
        let mut cmd = command(&all);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, None)
    }

    /// Spawns `cmd` (forkecho, or something that execs it: an activator, a
    /// shell) with stderr collected. With `addr` None, waits for the
    /// "listening on" line and takes the address from it; otherwise the
    /// server is at `addr` (it may not even have started yet, as under
    /// socket activation).
    pub fn spawn(mut cmd: Command, addr: Option<SocketAddr>) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn forkecho");
        let pid = child.id() as i32;
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stderr);
                let mut line = String::new();
                while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let _ = tx.send(rest.trim().to_string());
                    }
                    log.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
        }
        let addr = match addr {
            Some(a) => a,
            None => match rx.recv_timeout(SOON) {
                Ok(a) => a.parse().expect("listening address"),
                Err(_) => {
                    let _ = child.kill();
                    panic!("no 'listening on' line; log: {}", log.lock().unwrap());
                }
            },
        };
        Server {
            child: Some(child),
            pid,
            addr,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle` `count` times or more.
    pub fn wait_log_count(&self, needle: &str, count: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let n = self.log().matches(needle).count();
            if n >= count || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig).expect("kill");
    }

    /// Waits for the server to exit; panics after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("server already waited for");
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                // Let the reader thread collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return st;
            }
            if Instant::now() > deadline {
                panic!("server did not exit within {within:?}; log: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn connect(&self) -> TcpStream {
        TcpStream::connect_timeout(&self.addr, SOON).expect("connect")
    }

    /// Connects from a chosen loopback source address (any of 127.0.0.0/8
    /// works on Linux without configuration), to test per-address rules.
    pub fn connect_from(&self, src: &str) -> TcpStream {
        use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};
        let src: std::net::IpAddr = src.parse().unwrap();
        let family = if src.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        let local = SockaddrStorage::from(SocketAddr::new(src, 0));
        socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &local).unwrap();
        // A server on [::ffff:127.0.0.1] is reached at 127.0.0.1.
        let target = match self.addr {
            SocketAddr::V6(v6) if src.is_ipv4() => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => self.addr,
            },
            a => a,
        };
        let peer = SockaddrStorage::from(target);
        socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &peer).expect("connect");
        TcpStream::from(fd)
    }

    /// Sends SIGUSR1 and returns the status line it produces (without the
    /// `forkecho[PID]: ` prefix).
    pub fn status(&self) -> String {
        let before = self.log().matches("status: ").count();
        self.signal(nix::sys::signal::Signal::SIGUSR1);
        assert_eq!(
            self.wait_log_count("status: ", before + 1, SOON),
            before + 1,
            "no status line; log: {}",
            self.log()
        );
        let log = self.log();
        let line = log.lines().filter(|l| l.contains("status: ")).nth(before);
        let line = line.unwrap();
        line[line.find("status: ").unwrap()..].to_string()
    }

    /// The value of one counter in a fresh status line.
    pub fn counter(&self, name: &str) -> u64 {
        let line = self.status();
        let key = format!(" {name}=");
        let at = line
            .find(&key)
            .unwrap_or_else(|| panic!("no {name} in {line}"));
        line[at + key.len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Live (non-zombie) and zombie children of the server.
    pub fn children(&self) -> (Vec<i32>, Vec<i32>) {
        children_of(self.pid)
    }

    /// Waits until the server has exactly `n` children that it has not
    /// reaped yet (live or zombie): `wait_children(0)` means every exit has
    /// been seen by the parent. Counting zombies matters under QEMU, where a
    /// child is multi-threaded: its main thread shows as a zombie before the
    /// other threads have gone and the parent can reap it.
    pub fn wait_children(&self, n: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let (live, zombies) = self.children();
            let live = live.len() + zombies.len();
            if live == n || Instant::now() > deadline {
                return live;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let (kids, _) = children_of(self.pid);
            let _ = c.kill();
            let _ = c.wait();
            for k in kids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(k),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// (state, ppid) from /proc/PID/stat.
pub fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f[0].chars().next()?;
    let ppid = f[1].parse().ok()?;
    // utime + stime, fields 14 and 15 of the whole line (11, 12 here).
    let cpu = f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?;
    Some((state, ppid, cpu))
}

/// Waits until `pid` is gone from /proc (exited *and* reaped).
pub fn wait_reaped(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while proc_stat(pid).is_some() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

pub fn children_of(pid: i32) -> (Vec<i32>, Vec<i32>) {
    let mut live = vec![];
    let mut zombies = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((state, ppid, _)) = proc_stat(p) {
            if ppid == pid {
                if state == 'Z' {
                    zombies.push(p)
                } else {
                    live.push(p)
                }
            }
        }
    }
    (live, zombies)
}

/// (fd number, link target) for each open descriptor of `pid`.
pub fn fds(pid: i32) -> Vec<(i32, String)> {
    let mut v = vec![];
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let (Ok(n), Ok(t)) = (
                e.file_name().to_string_lossy().parse(),
                std::fs::read_link(e.path()),
            ) {
                v.push((n, t.to_string_lossy().into_owned()));
            }
        }
    }
    v.sort();
    v
}

/// CPU time (ticks) used by `pid` so far.
pub fn cpu_ticks(pid: i32) -> u64 {
    proc_stat(pid).map(|s| s.2).unwrap_or(0)
}

fn wait_readable(s: &TcpStream, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = left.as_millis().min(i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
    loop {
        match nix::poll::poll(&mut fds, PollTimeout::try_from(ms).unwrap()) {
            Ok(n) => return n > 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Reads exactly `n` bytes or panics at the deadline (poll-based: QEMU user
/// mode cannot be trusted with SO_RCVTIMEO).
pub fn read_exact_within(s: &mut TcpStream, n: usize, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        assert!(
            wait_readable(s, deadline),
            "timed out after {got} of {n} bytes"
        );
        match s.read(&mut out[got..]) {
            Ok(0) => panic!("EOF after {got} of {n} bytes"),
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read after {got} of {n} bytes: {e}"),
        }
    }
    out
}

/// Reads until EOF; panics at the deadline.
pub fn read_to_eof_within(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut out = vec![];
    let mut buf = [0u8; 65536];
    loop {
        assert!(
            wait_readable(s, deadline),
            "no EOF after {} bytes",
            out.len()
        );
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read after {} bytes: {e}", out.len()),
        }
    }
}

/// True when nothing (no byte, no EOF) arrives for `d`.
pub fn silent_for(s: &TcpStream, d: Duration) -> bool {
    !wait_readable(s, Instant::now() + d)
}

/// What happens next on a socket: EOF/reset (true) or data (false), bounded.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    if !wait_readable(s, Instant::now() + within) {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

/// Opens a connection, proves it is served (one echo), and returns it with
/// the pid of the one child serving it.
pub fn open_session(srv: &Server, payload: &[u8]) -> (TcpStream, i32) {
    let mut s = srv.connect();
    s.write_all(payload).unwrap();
    assert_eq!(read_exact_within(&mut s, payload.len(), SOON), payload);
    let kids = srv.children().0;
    assert_eq!(kids.len(), 1, "one child per connection: {kids:?}");
    (s, kids[0])
}

/// One short echo round trip on a fresh connection.
pub fn round_trip(srv: &Server, payload: &[u8]) {
    let mut s = srv.connect();
    s.write_all(payload).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_eof_within(&mut s, SOON), payload);
}

/// A loopback port that was free a moment ago (for activators that cannot
/// bind port 0 and report it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The runner and binary as one argument list, for wrapping in another
/// command (an activator, a shell).
pub fn runner_and_bin() -> Vec<String> {
    let mut v = runner();
    v.push(bin());
    v
}

/// A fresh empty directory in the system's temporary directory, named after
/// this test process.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("forkecho-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One field of /proc/PID/status ("Uid", "NoNewPrivs", ...), whitespace
/// normalised.
pub fn proc_status(pid: i32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// xorshift64*: reproducible pseudo-random bytes without a crate.
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(n);
    v
}

/// FNV-1a 64: a digest both sides compute the same way.
pub fn digest(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
