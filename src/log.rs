//! Logging: one line per event on stderr, or with `--syslog` one datagram
//! per event to the local syslog socket, formatted into fixed storage and
//! written with a single call.
//!
//! Why not `eprintln!`: std's stderr takes a lock and may issue several writes
//! per line; lines from many children could then interleave. One `write(2)` of
//! one complete line is atomic enough for a pipe or a journal socket (lines are
//! far below `PIPE_BUF`). Formatting goes through `core::fmt` into a stack
//! buffer, so logging never touches the heap — it is safe in a forked child.
//!
//! Logging never blocks: a log pipe that nobody reads must not stop the
//! accept loop (or its signal handling). [`init_stderr`] arranges a
//! non-blocking way to reach stderr without changing the open file that the
//! launcher shares (a terminal or a supervisor's pipe): a pipe or terminal is
//! opened again through `/proc/self/fd/2` with `O_NONBLOCK` and that new
//! open file takes descriptor 2's place; a socket (the journal) is written
//! with `MSG_DONTWAIT`; a regular file as it is. A line
//! that cannot be written whole is dropped and counted in the page shared
//! with the children (`shared`); the parent says how many once it can write
//! again, and the status line carries the total.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU8, Ordering};
use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags, UnixAddr};
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::time::Instant;

pub use crate::limits::LINE_MAX;
use crate::sys::SetOnce;

/// How much to say. Ordered: a message is written when its level is at or
/// below the configured one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[repr(u8)]
pub enum Level {
    /// Something is wrong (always shown, even with `--quiet`).
    Error = 0,
    /// Life-cycle events: listening, shutdown, abnormal child exits.
    Info = 1,
    /// Per-connection lines (`--verbose`).
    Debug = 2,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
/// Whether lines go to stderr (off in inetd mode when stderr is the
/// client's socket; with `--syslog`, the fallback for a line syslog refused).
static STDERR: AtomicBool = AtomicBool::new(true);
/// Whether stderr is a socket (written with `send(MSG_DONTWAIT)`).
static STDERR_SOCKET: AtomicBool = AtomicBool::new(false);
/// Set in the parent only: it reports dropped lines once it can write.
static REPORTER: AtomicBool = AtomicBool::new(false);
/// The dropped-line total the parent last reported.
static REPORTED: AtomicU32 = AtomicU32::new(0);
/// The connected syslog socket, or -1.
static SYSLOG: AtomicI32 = AtomicI32::new(-1);
/// Where the syslog socket is, to reconnect after syslogd restarts. Set
/// once at start-up; reconnecting then needs no allocation.
static SYSLOG_ADDR: SetOnce<UnixAddr> = SetOnce::new();

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// A line under construction: fixed storage, silently truncating.
pub struct Line {
    buf: [u8; LINE_MAX],
    len: usize,
    truncated: bool,
}

impl Line {
    pub const fn new() -> Self {
        Line {
            buf: [0; LINE_MAX],
            len: 0,
            truncated: false,
        }
    }

    /// The text so far, without a newline.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Ends the line: marks a cut with `...` and appends the newline, which
    /// always fits because `write_str` keeps 4 bytes in reserve.
    fn finish(&mut self) -> &[u8] {
        if self.truncated {
            self.buf[self.len..self.len + 3].copy_from_slice(b"...");
            self.len += 3;
        }
        self.buf[self.len] = b'\n';
        self.len += 1;
        &self.buf[..self.len]
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Keep room for "...\n" so `finish` never overflows.
        let room = LINE_MAX - 4 - self.len;
        let bytes = s.as_bytes();
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        if n < bytes.len() {
            self.truncated = true;
        }
        // Never report an error: a cut line is still worth writing.
        Ok(())
    }
}

/// Formats `forkecho[PID]: <args>` and writes it to stderr in one call,
/// or sends `<PRI>forkecho[PID]: <args>` to syslog (facility daemon).
///
/// The pid is read at log time (`getpid(2)`) rather than cached, so a line
/// written by a child names the child without the child having to set
/// anything up after fork.
pub fn emit(level: Level, args: fmt::Arguments<'_>) {
    let mut line = Line::new();
    let syslog = SYSLOG.load(Ordering::Relaxed);
    if syslog >= 0 {
        // daemon (3) * 8 + severity: err (3), info (6), debug (7).
        let severity = match level {
            Level::Error => 3,
            Level::Info => 6,
            Level::Debug => 7,
        };
        let _ = write!(line, "<{}>", 24 + severity);
    }
    let body = line.len;
    let _ = write!(line, "forkecho[{}]: ", nix::unistd::getpid());
    let _ = line.write_fmt(args);
    if syslog >= 0 && send_syslog(syslog, &mut line) {
        return;
    }
    if !STDERR.load(Ordering::Relaxed) {
        crate::shared::log_dropped();
    } else if write_stderr(&line.finish()[body..]) {
        report_dropped();
    }
}

/// In the parent, after a line went out: if lines were dropped since the
/// last report, one line saying how many.
fn report_dropped() {
    if !REPORTER.load(Ordering::Relaxed) {
        return;
    }
    let total = crate::shared::dropped_total();
    let reported = REPORTED.swap(total, Ordering::Relaxed);
    if total != reported {
        emit(
            Level::Error,
            format_args!(
                "{} log lines dropped: the log was not being read",
                total.wrapping_sub(reported)
            ),
        );
    }
}

/// Makes this process the one that reports dropped lines (the parent).
pub fn report_drops_here() {
    REPORTER.store(true, Ordering::Relaxed);
}

/// One datagram; on a broken connection (syslogd restarted) reconnect once
/// and resend. False when it could not be sent: the caller falls back to
/// stderr rather than lose the line.
fn send_syslog(fd: RawFd, line: &mut Line) -> bool {
    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    match socket::send(fd, line.as_bytes(), flags) {
        Ok(_) => return true,
        Err(Errno::ECONNREFUSED | Errno::ENOTCONN | Errno::ECONNRESET) => {}
        Err(_) => return false,
    }
    let Some(addr) = SYSLOG_ADDR.get() else {
        return false;
    };
    match connect_syslog(addr) {
        Ok(new) => {
            // The old descriptor is dead; the new one takes its number's
            // place in SYSLOG.
            SYSLOG.store(new, Ordering::Relaxed);
            crate::sys::close_raw(fd);
            socket::send(new, line.as_bytes(), flags).is_ok()
        }
        Err(_) => false,
    }
}

/// `socket(2)` + `connect(2)`: a close-on-exec datagram socket connected to
/// a local socket (syslog's, or systemd's notification socket).
pub fn connect_unix_datagram(addr: &UnixAddr) -> nix::Result<std::os::fd::OwnedFd> {
    let fd = socket::socket(
        socket::AddressFamily::Unix,
        socket::SockType::Datagram,
        socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), addr)?;
    Ok(fd)
}

fn connect_syslog(addr: &UnixAddr) -> nix::Result<RawFd> {
    connect_unix_datagram(addr).map(IntoRawFd::into_raw_fd)
}

/// `--syslog`: connect to `path` now (before any chroot), then send every
/// line there instead of stderr.
pub fn open_syslog(path: &str) -> nix::Result<()> {
    let addr = UnixAddr::new(path)?;
    let fd = connect_syslog(&addr)?;
    let _ = SYSLOG_ADDR.set(addr);
    SYSLOG.store(fd, Ordering::Relaxed);
    Ok(())
}

/// The syslog descriptor, which children must keep open; -1 if none.
pub fn syslog_fd() -> RawFd {
    SYSLOG.load(Ordering::Relaxed)
}

/// Stop writing to stderr (it is the client's socket in inetd mode).
pub fn stderr_off() {
    STDERR.store(false, Ordering::Relaxed);
}

/// One non-blocking write of a whole line to stderr; false (and counted)
/// when it did not go out whole: a closed or full stderr must never take the
/// server down, and retrying could block.
fn write_stderr(bytes: &[u8]) -> bool {
    let fd = 2;
    let sent = if STDERR_SOCKET.load(Ordering::Relaxed) {
        socket::send(fd, bytes, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL)
    } else {
        crate::sys::write_raw(fd, bytes)
    };
    let whole = sent == Ok(bytes.len());
    if !whole {
        crate::shared::log_dropped();
    }
    whole
}

/// Arranges non-blocking writes to stderr (see the module doc). At
/// start-up, before any chroot hides /proc.
pub fn init_stderr() {
    use nix::sys::stat::SFlag;
    let Some((_, _, mode)) = crate::sys::file_id(2) else {
        return;
    };
    match SFlag::from_bits_truncate(mode as _) & SFlag::S_IFMT {
        SFlag::S_IFSOCK => STDERR_SOCKET.store(true, Ordering::Relaxed),
        SFlag::S_IFREG => {}
        _ => {
            use nix::fcntl::OFlag;
            let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
            let mode = nix::sys::stat::Mode::empty();
            // Where /proc is missing the writes stay blocking: better than
            // changing a terminal's flags under the shell that owns it.
            if let Ok(fd) = nix::fcntl::open("/proc/self/fd/2", flags, mode) {
                let _ = nix::unistd::dup2_stderr(fd);
            }
        }
    }
}

/// Rate limit for a recurring line: the first goes out, then at most one per
/// [`LOG_INTERVAL`](crate::limits::LOG_INTERVAL), saying how many were held
/// back.
#[derive(Default)]
pub struct LogLimit {
    last: Option<Instant>,
    suppressed: u32,
}

impl LogLimit {
    /// `Some(n)` when a line may go out now (`n` lines were held back).
    pub fn allow(&mut self, now: Instant) -> Option<u32> {
        match self.last {
            Some(t) if now.duration_since(t) < crate::limits::LOG_INTERVAL => {
                self.suppressed = self.suppressed.saturating_add(1);
                None
            }
            _ => {
                self.last = Some(now);
                Some(core::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// A peer address that may be unknown, printed without allocating; an IPv4
/// client of a dual-stack socket as IPv4 (`192.0.2.7:5000`), the same in
/// every line.
pub struct PeerDisplay(pub Option<SocketAddr>);

impl fmt::Display for PeerDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => SocketAddr::new(crate::admission::unmap(a.ip()), a.port()).fmt(f),
            None => f.write_str("unknown peer"),
        }
    }
}

/// Just the address of a peer, IPv4 clients of a dual-stack socket written
/// as IPv4 (`192.0.2.7`, not `::ffff:192.0.2.7`), as the access rules read
/// them.
pub struct PeerIp(pub Option<SocketAddr>);

impl fmt::Display for PeerIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => crate::admission::unmap(a.ip()).fmt(f),
            None => f.write_str("unknown peer"),
        }
    }
}

/// `log!(Level::Info, "listening on {}", addr)` — formats only when enabled.
#[macro_export]
macro_rules! log {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::log::enabled($lvl) {
            $crate::log::emit($lvl, format_args!($($arg)*))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_line_is_kept_whole() {
        let mut l = Line::new();
        write!(l, "hello {}", 42).unwrap();
        assert_eq!(l.finish(), b"hello 42\n");
    }

    #[test]
    fn long_line_is_cut_and_marked() {
        let mut l = Line::new();
        for _ in 0..LINE_MAX / 4 {
            write!(l, "abcdefgh").unwrap();
        }
        let out = l.finish();
        assert_eq!(out.len(), LINE_MAX);
        assert!(out.ends_with(b"...\n"));
        assert!(out[..LINE_MAX - 4].iter().all(|b| b"abcdefgh".contains(b)));
    }

    #[test]
    fn levels_are_ordered() {
        set_level(Level::Error);
        assert!(enabled(Level::Error));
        assert!(!enabled(Level::Info));
        set_level(Level::Debug);
        assert!(enabled(Level::Info) && enabled(Level::Debug));
        set_level(Level::Info);
    }
}
