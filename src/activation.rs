//! How forkecho is started and how it tells its supervisor it is ready:
//! systemd socket activation (`LISTEN_FDS`), inetd mode (`--inetd`: one
//! connection on descriptor 0, no fork), `NOTIFY_SOCKET` (`READY=1`,
//! `STOPPING=1`, without libsystemd) and an s6-style `--ready-fd`.

use crate::error::{Error, Reason, Result};
use crate::limits::MAX_LISTENERS;
use crate::listener::{self, Listener};
use crate::log::Level;
use crate::session::{self, End};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{self, sockopt, MsgFlags, UnixAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// The sockets systemd passed: listening TCP sockets (`ListenStream=`) and
/// UDP sockets (`ListenDatagram=`), in the order passed.
pub struct Passed {
    pub tcp: heapless::Vec<Listener, MAX_LISTENERS>,
    pub udp: crate::udp::Sockets,
}

impl Passed {
    /// Whether `fd` is one of the passed sockets.
    pub fn owns(&self, fd: RawFd) -> bool {
        let tcp = self.tcp.iter().map(|l| l.fd.as_raw_fd());
        tcp.chain(self.udp.iter().map(|s| s.fd.as_raw_fd()))
            .any(|n| n == fd)
    }
}

/// Takes the sockets systemd passed, if any were passed to this
/// process: `LISTEN_PID` must be our pid (otherwise the variables were
/// meant for a parent and are ignored, as `sd_listen_fds` does). The
/// variables are removed either way, so nothing started later inherits
/// them. Each descriptor must be a listening TCP socket or a bound UDP
/// socket; it is made non-blocking and close-on-exec like the sockets we
/// bind ourselves.
pub fn listen_fds() -> Result<Option<Passed>> {
    // Not UTF-8 counts as absent, as with std::env::var(..).ok().
    let text = |v: Vec<u8>| String::from_utf8(v).ok();
    let pid = crate::sys::take_env(c"LISTEN_PID").and_then(text);
    let fds = crate::sys::take_env(c"LISTEN_FDS").and_then(text);
    crate::sys::take_env(c"LISTEN_FDNAMES");
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    // Through u32: one number parser in the binary instead of two.
    let pid = (pid.parse::<u32>().ok())
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| Error::Start(format!("LISTEN_PID={pid}: not a process id")))?;
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
    let mut out = Passed {
        tcp: heapless::Vec::new(),
        udp: heapless::Vec::new(),
    };
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + n as RawFd {
        let bad = |what: &str, e: Option<Errno>| {
            Error::Start(match e {
                Some(e) => format!("LISTEN_FDS: descriptor {fd} {what}: {}", Reason(e)),
                None => format!("LISTEN_FDS: descriptor {fd} {what}"),
            })
        };
        // Taken over at once: systemd handed them to this process, and
        // nothing of ours has been opened yet that could share a number.
        let owned = crate::sys::adopt(fd).map_err(|e| bad("is not open", Some(e)))?;
        let kind = socket::getsockopt(&owned, sockopt::SockType)
            .map_err(|e| bad("is not a socket", Some(e)))?;
        fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .and_then(|_| set_nonblocking(owned.as_fd()))
            .and_then(|()| listener::urgent_inline(&owned))
            .map_err(|e| bad("cannot be set up", Some(e)))?;
        if kind == socket::SockType::Datagram {
            let sock =
                crate::udp::prepare(owned).map_err(|e| bad("is not a UDP/IP socket", Some(e)))?;
            let _ = out.udp.push(sock);
            continue;
        }
        match socket::getsockopt(&owned, sockopt::AcceptConn) {
            Ok(true) if kind == socket::SockType::Stream => {}
            Ok(true) => return Err(bad("is not a stream socket", None)),
            Ok(false) => return Err(bad("is not listening", None)),
            Err(e) => return Err(bad("is not a socket", Some(e))),
        }
        let local =
            listener::local_addr(&owned).map_err(|e| bad("is not a TCP/IP socket", Some(e)))?;
        let _ = out.tcp.push(Listener { fd: owned, local });
    }
    Ok(Some(out))
}

/// What `--inetd` needs of the configuration.
pub struct Inetd<'a> {
    pub policy: &'a crate::admission::Policy,
    pub buffer_size: usize,
    pub mode: session::Mode,
    pub limits: session::Limits,
    pub sandbox: crate::sandbox::Mode,
    /// For a datagram socket on descriptor 0.
    pub udp_buffer: usize,
    pub udp_refuse_ports: crate::udp::Ports,
}

/// `--inetd`: echo the one connection on descriptor 0 in this process, no
/// fork and no listener (inetd, xinetd, systemd `Accept=yes`). The access
/// rules apply; the limits that need to remember other connections
/// (`--max-per-ip`, `--rate`) are the activator's job and refused by the
/// command line. Returns how the session ended.
pub fn serve_inetd(cfg: Inetd<'_>) -> Result<End> {
    // Descriptor 0 is the connection, ours for the life of the process.
    let conn = crate::sys::adopt(0)
        .map_err(|e| Error::sys("--inetd: descriptor 0 is not a connected socket", e))?;
    if socket::getsockopt(&conn, sockopt::SockType) == Ok(socket::SockType::Datagram) {
        return serve_inetd_udp(conn, cfg);
    }
    let conn = conn.as_fd();
    let peer = socket::getpeername::<socket::SockaddrStorage>(conn.as_raw_fd())
        .map_err(|e| Error::sys("--inetd: descriptor 0 is not a connected socket", e))?;
    let peer = listener::to_std(&peer);
    // BSD inetd and busybox put the socket on 0, 1 *and* 2: a log line on
    // stderr would then reach the client in the middle of its echo.
    if stderr_is_stdin() {
        crate::log::stderr_off();
    }
    let mask = crate::signals::install_for_inetd()?;
    if let Some(ip) = peer.map(|p| crate::admission::unmap(p.ip())) {
        if !cfg.policy.allows(ip) {
            crate::log!(
                Level::Info,
                "refused {ip}: {}",
                crate::admission::Refusal::Deny.name()
            );
            return Ok(End::Eof);
        }
    }
    set_nonblocking(conn)
        .and_then(|()| listener::urgent_inline(&conn))
        .map_err(|e| Error::sys("--inetd: cannot set up descriptor 0", e))?;
    // Leaked, not freed: the process ends with `_exit` right after the
    // session, and freeing would need munmap, which the sandbox forbids.
    let buf = vec![0u8; cfg.buffer_size].leak();
    crate::sandbox::enter_inetd(cfg.sandbox)?;
    Ok(session::run(conn, peer, buf, cfg.mode, cfg.limits, mask))
}

/// `--inetd` on a datagram socket (inetd `dgram wait`): the UDP echo
/// answers what is pending, then the process exits.
fn serve_inetd_udp(sock: OwnedFd, cfg: Inetd<'_>) -> Result<End> {
    if stderr_is_stdin() {
        crate::log::stderr_off();
    }
    set_nonblocking(sock.as_fd())
        .map_err(|e| Error::sys("--inetd: cannot make descriptor 0 non-blocking", e))?;
    let now = std::time::Instant::now();
    let mut gate = crate::admission::Gate::new(cfg.policy.clone(), b"", now);
    crate::udp::serve_inetd(sock, &mut gate, cfg.udp_buffer, cfg.udp_refuse_ports)?;
    Ok(End::Eof)
}

/// BSD inetd and busybox put the socket on 0, 1 *and* 2: is stderr the
/// client's socket (so log lines must stay out of it)?
fn stderr_is_stdin() -> bool {
    let id = |fd| crate::sys::file_id(fd).map(|(dev, ino, _)| (dev, ino));
    id(0).is_some() && id(0) == id(2)
}

/// `fcntl(F_GETFL)` then `fcntl(F_SETFL)` adding `O_NONBLOCK`, keeping the
/// other status flags.
fn set_nonblocking(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// `--ready-fd`: takes the descriptor over now, so a wrong number fails at
/// once rather than after start-up.
pub fn take_ready_fd(fd: RawFd) -> Result<OwnedFd> {
    crate::sys::adopt(fd).map_err(|e| Error::Start(format!("--ready-fd {fd}: {}", Reason(e))))
}

/// How forkecho tells its supervisor it is ready, and that it is stopping:
/// `READY=1`/`STOPPING=1` to systemd, the port to `--ready-fd`.
pub struct Readiness {
    notify: Option<Notify>,
    ready_fd: Option<OwnedFd>,
}

impl Readiness {
    pub fn new(notify: Option<Notify>, ready_fd: Option<OwnedFd>) -> Readiness {
        Readiness { notify, ready_fd }
    }

    /// `READY=1`, then s6-style readiness: the bound port and a newline to
    /// `--ready-fd`, which is then closed, so the supervisor's reader sees
    /// the line and then EOF.
    pub fn ready(&mut self, port: u16) {
        if let Some(n) = &self.notify {
            n.send("READY=1");
        }
        if let Some(fd) = self.ready_fd.take() {
            let mut line = crate::log::Line::new();
            let _ = core::fmt::Write::write_fmt(&mut line, format_args!("{port}\n"));
            if let Err(e) = nix::unistd::write(&fd, line.as_bytes()) {
                crate::log!(Level::Error, "--ready-fd: write failed: {}", Reason(e));
            }
        }
    }

    pub fn stopping(&self) {
        if let Some(n) = &self.notify {
            n.send("STOPPING=1");
        }
    }

    /// In a child where `close_range` is missing: closes these by number
    /// (the child never drops them).
    pub fn close_in_child(&self) {
        if let Some(n) = &self.notify {
            crate::sys::close_raw(n.fd.as_raw_fd());
        }
        if let Some(f) = &self.ready_fd {
            crate::sys::close_raw(f.as_raw_fd());
        }
    }
}

/// The systemd notification socket (`NOTIFY_SOCKET`): a datagram socket
/// connected at start-up — before any `--chroot` hides the path — and kept
/// (close-on-exec) for `READY=1` and, at shutdown, `STOPPING=1`.
pub struct Notify {
    fd: OwnedFd,
}

impl Notify {
    /// Reads and removes `NOTIFY_SOCKET` (a path, or `@name` for an
    /// abstract socket) and connects to it. Problems are logged, not fatal:
    /// the service manager will notice a missing READY=1 on its own.
    pub fn from_env() -> Option<Notify> {
        let path = crate::sys::take_env(c"NOTIFY_SOCKET")?;
        let bytes = path.as_slice();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => UnixAddr::new_abstract(name),
            None => UnixAddr::new(bytes),
        };
        match addr.and_then(|a| crate::log::connect_unix_datagram(&a)) {
            Ok(fd) => Some(Notify { fd }),
            Err(e) => {
                crate::log!(Level::Error, "NOTIFY_SOCKET unusable: {}", Reason(e));
                None
            }
        }
    }

    /// `send(2)` one state message.
    pub fn send(&self, state: &str) {
        if let Err(e) = socket::send(
            self.fd.as_raw_fd(),
            state.as_bytes(),
            MsgFlags::MSG_NOSIGNAL,
        ) {
            crate::log!(
                Level::Error,
                "NOTIFY_SOCKET: {state} not sent: {}",
                Reason(e)
            );
        }
    }
}
