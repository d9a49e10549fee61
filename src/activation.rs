//! How forkecho is started and how it tells its supervisor it is ready:
//! systemd socket activation (`LISTEN_FDS`), inetd mode (`--inetd`: one
//! connection on descriptor 0, no fork), `NOTIFY_SOCKET` (`READY=1`,
//! `STOPPING=1`, without libsystemd) and an s6-style `--ready-fd`.

use crate::cli::{Config, MAX_LISTENERS};
use crate::error::{Error, Reason, Result};
use crate::listener::{self, Listener};
use crate::log::Level;
use crate::session;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{self, sockopt, MsgFlags, UnixAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Takes the listening sockets systemd passed, if any were passed to this
/// process: `LISTEN_PID` must be our pid (otherwise the variables were
/// meant for a parent and are ignored, as `sd_listen_fds` does). The
/// variables are removed either way, so nothing started later inherits
/// them. Each descriptor must be a listening TCP socket; it is made
/// non-blocking and close-on-exec like the sockets we bind ourselves.
pub fn listen_fds() -> Result<Option<heapless::Vec<Listener, MAX_LISTENERS>>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    let pid: i32 = pid
        .parse()
        .map_err(|_| Error::Start(format!("LISTEN_PID={pid}: not a process id")))?;
    if pid != nix::unistd::getpid().as_raw() {
        crate::log!(
            Level::Info,
            "ignoring LISTEN_FDS: LISTEN_PID={pid} is another process"
        );
        return Ok(None);
    }
    let n: usize = fds
        .parse()
        .ok()
        .filter(|n| (1..=MAX_LISTENERS).contains(n))
        .ok_or_else(|| {
            Error::Start(format!(
                "LISTEN_FDS={fds}: expected 1..={MAX_LISTENERS} descriptors"
            ))
        })?;
    let mut out = heapless::Vec::new();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + n as RawFd {
        let bad = |what: &str, e: Option<Errno>| {
            Error::Start(match e {
                Some(e) => format!("LISTEN_FDS: descriptor {fd} {what}: {}", Reason(e)),
                None => format!("LISTEN_FDS: descriptor {fd} {what}"),
            })
        };
        // SAFETY: systemd handed these descriptors to us; borrowed only to
        // inspect them before taking ownership below.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        match socket::getsockopt(&b, sockopt::AcceptConn) {
            Ok(true) => {}
            Ok(false) => return Err(bad("is not listening", None)),
            Err(e) => return Err(bad("is not a socket", Some(e))),
        }
        if socket::getsockopt(&b, sockopt::SockType) != Ok(socket::SockType::Stream) {
            return Err(bad("is not a stream socket", None));
        }
        // SAFETY: checked above to be an open socket that nothing else in
        // this process owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let local =
            listener::local_addr(&owned).map_err(|e| bad("is not a TCP/IP socket", Some(e)))?;
        fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .and_then(|_| set_nonblocking(owned.as_fd()))
            .map_err(|e| bad("cannot be set up", Some(e)))?;
        let _ = out.push(Listener { fd: owned, local });
    }
    Ok(Some(out))
}

/// `--inetd`: echo the one connection on descriptor 0 in this process, no
/// fork and no listener (inetd, xinetd, systemd `Accept=yes`). The access
/// rules apply; the limits that need to remember other connections
/// (`--max-per-ip`, `--rate`) are the activator's job and refused by the
/// command line. Returns the exit status.
pub fn serve_inetd(cfg: &Config) -> Result<i32> {
    // SAFETY: descriptor 0 is ours for the life of the process.
    let conn = unsafe { BorrowedFd::borrow_raw(0) };
    let peer = socket::getpeername::<socket::SockaddrStorage>(0)
        .map_err(|e| Error::sys("--inetd: descriptor 0 is not a connected socket", e))?;
    let peer = listener::to_std(&peer);
    // BSD inetd and busybox put the socket on 0, 1 *and* 2: a log line on
    // stderr would then reach the client in the middle of its echo.
    if same_file(0, 2) {
        crate::log::stderr_off();
    }
    crate::signals::ignore_sigpipe()?;
    if let Some(ip) = peer.map(|p| crate::admission::unmap(p.ip())) {
        if !cfg.policy.allows(ip) {
            crate::log!(
                Level::Info,
                "refused {ip}: {}",
                crate::admission::Refusal::Deny.name()
            );
            return Ok(session::EXIT_OK);
        }
    }
    set_nonblocking(conn)
        .map_err(|e| Error::sys("--inetd: cannot make descriptor 0 non-blocking", e))?;
    let mut buf = vec![0u8; cfg.buffer_size];
    let end = session::run(conn, peer, &mut buf, cfg.echo_mode, cfg.limits);
    Ok(end.status())
}

/// `fcntl(F_GETFL)` then `fcntl(F_SETFL)` adding `O_NONBLOCK`, keeping the
/// other status flags.
fn set_nonblocking(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// `fstat(2)` both: the same open file (device and inode)? Descriptors 0-2
/// are always open (`main` fills closed ones with /dev/null).
fn same_file(a: RawFd, b: RawFd) -> bool {
    // SAFETY: see above; borrowed for the call only.
    let (a, b) = unsafe { (BorrowedFd::borrow_raw(a), BorrowedFd::borrow_raw(b)) };
    match (nix::sys::stat::fstat(a), nix::sys::stat::fstat(b)) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

/// `fcntl(F_GETFD)`: is `--ready-fd` open? Checked before binding, so a
/// wrong number fails at once rather than after start-up.
pub fn check_ready_fd(fd: RawFd) -> Result<()> {
    // Raw libc: the descriptor may well be closed, which a BorrowedFd may
    // not be.
    // SAFETY: F_GETFD only reads the descriptor's flags.
    Errno::result(unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) })
        .map(drop)
        .map_err(|e| Error::Start(format!("--ready-fd {fd}: {}", Reason(e))))
}

/// s6-style readiness: write the bound port and a newline to `fd`, then
/// close it, so the supervisor's reader sees the line and then EOF.
pub fn signal_ready_fd(fd: RawFd, port: u16) {
    let mut line = crate::log::Line::new();
    let _ = core::fmt::Write::write_fmt(&mut line, format_args!("{port}\n"));
    // SAFETY: the user gave us this descriptor to write to and close;
    // nothing else in the process uses it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Err(e) = nix::unistd::write(&fd, line.as_bytes()) {
        crate::log!(Level::Error, "--ready-fd: write failed: {}", Reason(e));
    }
}

/// The systemd notification socket (`NOTIFY_SOCKET`), a datagram socket
/// kept open (close-on-exec) for `READY=1` and, at shutdown, `STOPPING=1`.
pub struct Notify {
    fd: OwnedFd,
    addr: UnixAddr,
}

impl Notify {
    /// Reads and removes `NOTIFY_SOCKET` (a path, or `@name` for an
    /// abstract socket). Problems are logged, not fatal: the service
    /// manager will notice a missing READY=1 on its own.
    pub fn from_env() -> Option<Notify> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        std::env::remove_var("NOTIFY_SOCKET");
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => UnixAddr::new_abstract(name),
            None => UnixAddr::new(bytes),
        };
        let sock = socket::socket(
            socket::AddressFamily::Unix,
            socket::SockType::Datagram,
            socket::SockFlag::SOCK_CLOEXEC,
            None,
        );
        match (addr, sock) {
            (Ok(addr), Ok(fd)) => Some(Notify { fd, addr }),
            (Err(e), _) | (_, Err(e)) => {
                crate::log!(Level::Error, "NOTIFY_SOCKET unusable: {}", Reason(e));
                None
            }
        }
    }

    /// `sendto(2)` one state message.
    pub fn send(&self, state: &str) {
        if let Err(e) = socket::sendto(
            self.fd.as_raw_fd(),
            state.as_bytes(),
            &self.addr,
            MsgFlags::MSG_NOSIGNAL,
        ) {
            crate::log!(
                Level::Error,
                "NOTIFY_SOCKET: {state} not sent: {}",
                Reason(e)
            );
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
