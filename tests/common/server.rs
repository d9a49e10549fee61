//! Starting the real binary and running it to the end.

use super::io::{read_exact_within, read_to_eof_within};
use super::procfs::children_of;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
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
    // The runner .cargo/config.toml gives the target this harness was built
    // for (build.rs reads it): ARMv6 runs on the Pi 1 core, so that any
    // ARMv7-only instruction faults.
    let r: Vec<String> = env!("FORKECHO_RUNNER_DEFAULT")
        .split_whitespace()
        .map(String::from)
        .collect();
    // Natively on a board (no emulator installed) the binary runs as is.
    let on_path = |prog: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
    };
    match r.first() {
        Some(prog) if on_path(prog) => r,
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
        // A dual-stack [::]:P is reached at 127.0.0.1:P from IPv4.
        let target = match self.addr {
            SocketAddr::V6(v6) if src.is_ipv4() => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None if v6.ip().is_unspecified() => {
                    SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), v6.port())
                }
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

/// Runs forkecho with `args` to the end and asserts the failure contract:
/// exit status `code`, nothing on stdout, exactly one line on stderr with no
/// panic in it, containing each of `needles`.
pub fn assert_one_line_error(args: &[&str], code: i32, needles: &[&str]) -> String {
    let (st, out, err) = run_to_end(args);
    assert_one_line(st.code(), &err, code, needles, &format!("{args:?}"));
    assert_eq!(out, "", "{args:?} wrote to stdout");
    err
}

/// The failure contract for any way of running forkecho (a shell, an
/// activator): `status` is `code`, `err` is one line without a panic and
/// contains each of `needles`.
pub fn assert_one_line(status: Option<i32>, err: &str, code: i32, needles: &[&str], what: &str) {
    assert_eq!(status, Some(code), "{what}: stderr {err:?}");
    assert_eq!(err.lines().count(), 1, "{what}: not one line: {err:?}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    for n in needles {
        assert!(err.contains(n), "{what}: {err:?} lacks {n:?}");
    }
}

/// Opens a connection, proves it is served (one echo), and returns it with
/// the pid of the one child serving it.
pub fn open_session(srv: &Server, payload: &[u8]) -> (TcpStream, i32) {
    // The server's children before: one of an earlier session may still be
    // on its way out (its exit and reaping trail its client's EOF).
    let before = srv.children().0;
    let mut s = srv.connect();
    s.write_all(payload).unwrap();
    assert_eq!(read_exact_within(&mut s, payload.len(), SOON), payload);
    let kids: Vec<i32> = (srv.children().0.into_iter())
        .filter(|k| !before.contains(k))
        .collect();
    assert_eq!(kids.len(), 1, "one new child per connection: {kids:?}");
    (s, kids[0])
}

/// One short echo round trip on a fresh connection.
pub fn round_trip(srv: &Server, payload: &[u8]) {
    let mut s = srv.connect();
    s.write_all(payload).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_eof_within(&mut s, SOON), payload);
}

/// A descriptor number that is closed in this test process and far above
/// every open one, so neither the server nor an emulator in front of it
/// (both take the lowest free numbers) will have it open. No number is
/// assumed free: CI runs the suite with extra descriptors inherited.
pub fn closed_fd() -> i32 {
    let own = super::procfs::fds(std::process::id() as i32);
    own.last().map_or(2, |f| f.0) + 100
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

/// forkecho behind the real `systemd-socket-activate` with `args`, on a
/// loopback port, run with `server_args`; returns once the activator
/// listens (forkecho itself starts with the first client).
pub fn activator(args: &[&str], server_args: &[&str]) -> Server {
    spawn_activator(|port| {
        let mut cmd = Command::new("systemd-socket-activate");
        cmd.args(args)
            .arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .args(runner_and_bin())
            .args(server_args);
        cmd
    })
}

/// Spawns `make(port)`, an activator that binds 127.0.0.1:`port` itself and
/// says "Listening on". systemd-socket-activate takes no port 0, so the port
/// is probed free; another process can take it before the activator binds
/// it, and then the next probed port is tried.
pub fn spawn_activator(make: impl Fn(u16) -> Command) -> Server {
    for _ in 0..3 {
        let port = free_port();
        let srv = Server::spawn(make(port), Some(SocketAddr::from(([127, 0, 0, 1], port))));
        let deadline = Instant::now() + SOON;
        loop {
            let log = srv.log();
            if log.contains("Listening on") {
                return srv;
            }
            if log.contains("Address already in use") {
                break;
            }
            assert!(Instant::now() < deadline, "activator: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("activator: three probed ports were taken before it could bind them");
}

/// The runner and binary as one argument list, for wrapping in another
/// command (an activator, a shell).
pub fn runner_and_bin() -> Vec<String> {
    let mut v = runner();
    v.push(bin());
    v
}

/// A fresh empty directory in the system's temporary directory, named after
/// this test process; removed with everything in it when the guard drops,
/// also when the test fails.
pub fn temp_dir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("forkecho-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

pub struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
