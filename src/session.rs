//! The echo session, run in the forked child (or, with `--inetd`, in the
//! only process).
//!
//! The connection is non-blocking and every wait is a `poll(2)` with a
//! timeout, so the two session limits hold whatever the peer does:
//! `--idle-timeout` (nothing received or sent for that long; a peer that
//! stops reading stalls our writes and counts as idle too) and
//! `--max-session` (total lifetime). Poll timeouts, not `SO_RCVTIMEO`: they
//! bound writes as well as reads, and QEMU user mode cannot read that
//! option back.
//!
//! Everything here works on memory prepared before fork (the buffer) or on the
//! stack; nothing allocates. The child never returns: it ends with `_exit(2)`
//! so no exit handler runs and no buffer inherited from the parent is flushed
//! a second time.

use crate::error::Reason;
use crate::limits::SPLICE_CHUNK;
use crate::log::{Level, PeerDisplay};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, Shutdown};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

/// How a session ended. The child's exit status encodes it ([`End::status`]),
/// and the parent decodes it ([`End::from_status`]), so the ends are counted
/// without any channel but `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed its side; everything was echoed, then we closed ours.
    Eof,
    /// The peer reset the connection or stopped reading (`ECONNRESET`,
    /// `EPIPE`): an ordinary way for a client to leave.
    Reset,
    /// `--idle-timeout` passed without a byte moving.
    Idle,
    /// `--max-session` passed.
    Lifetime,
    /// Any other error: worth a log line.
    Error(Errno),
}

/// Exit statuses of a child, one per way a session ends.
const EXIT_OK: i32 = 0;
const EXIT_ERROR: i32 = 1;
const EXIT_IDLE: i32 = 2;
const EXIT_LIFETIME: i32 = 3;

impl End {
    fn name(self) -> &'static str {
        match self {
            End::Eof => "eof",
            End::Reset => "reset",
            End::Idle => "idle timeout",
            End::Lifetime => "session lifetime",
            End::Error(_) => "error",
        }
    }

    /// The child's exit status: 0 for the ways a client may leave, 1 for a
    /// real error (the only one the parent logs), 2 and 3 for the limits.
    pub fn status(self) -> i32 {
        match self {
            End::Eof | End::Reset => EXIT_OK,
            End::Error(_) => EXIT_ERROR,
            End::Idle => EXIT_IDLE,
            End::Lifetime => EXIT_LIFETIME,
        }
    }

    /// The inverse of [`End::status`], as far as the status tells: 0 comes
    /// back as `Eof` (a reset exits 0 too), any unknown status as an error
    /// whose errno is not known.
    pub fn from_status(code: i32) -> End {
        match code {
            EXIT_OK => End::Eof,
            EXIT_IDLE => End::Idle,
            EXIT_LIFETIME => End::Lifetime,
            _ => End::Error(Errno::UnknownErrno),
        }
    }
}

/// How the child moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Splice until the session proves to be bulk (64 KiB echoed), then
    /// copy. Measured on loopback: splice ties copy for short exchanges and
    /// never touches the buffer (one page less per idle child), but copy is
    /// faster for streams. The default.
    Auto,
    /// `splice(2)` socket -> pipe -> socket for the whole session: the data
    /// never enters user space and the buffer is never touched.
    Splice,
    /// `read(2)`/`write(2)` through the buffer prepared before fork.
    Copy,
}

impl core::str::FromStr for Mode {
    type Err = ();

    fn from_str(s: &str) -> Result<Mode, ()> {
        match s {
            "auto" => Ok(Mode::Auto),
            "splice" => Ok(Mode::Splice),
            "copy" => Ok(Mode::Copy),
            _ => Err(()),
        }
    }
}

/// What every child serves with, prepared before the first fork.
pub struct Setup {
    /// The echo buffer, allocated once and inherited by every child (only
    /// copying touches it).
    pub buf: Box<[u8]>,
    pub mode: Mode,
    pub limits: Limits,
}

impl Setup {
    pub fn serve(&mut self, conn: BorrowedFd<'_>, peer: Option<SocketAddr>) -> End {
        run(conn, peer, &mut self.buf, self.mode, self.limits)
    }
}

/// The two session limits; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub idle: Option<Duration>,
    pub lifetime: Option<Duration>,
}

/// The session's clock: when it started and when a byte last moved.
struct Clock {
    limits: Limits,
    start: Instant,
    last: Instant,
}

impl Clock {
    fn new(limits: Limits) -> Clock {
        let now = Instant::now();
        Clock {
            limits,
            start: now,
            last: now,
        }
    }

    fn touch(&mut self) {
        if self.limits.idle.is_some() {
            self.last = Instant::now();
        }
    }

    /// Milliseconds `poll` may wait (-1: forever), or the limit that has
    /// passed. Rounded up, so a wake-up never comes a hair early and spins.
    fn timeout(&self) -> Result<i32, End> {
        let now = Instant::now();
        let mut ms = -1i32;
        let limits = [
            (self.limits.idle.map(|d| self.last + d), End::Idle),
            (self.limits.lifetime.map(|d| self.start + d), End::Lifetime),
        ];
        for (deadline, end) in limits {
            let Some(deadline) = deadline else { continue };
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Err(end);
            }
            // u64 arithmetic: u128 division would pull a large routine into
            // 32-bit ARM builds.
            let left = left
                .as_secs()
                .saturating_mul(1000)
                .saturating_add(u64::from(left.subsec_nanos().div_ceil(1_000_000)))
                .min(i32::MAX as u64) as i32;
            if ms < 0 || left < ms {
                ms = left;
            }
        }
        Ok(ms)
    }
}

/// Waits with `poll(2)` until `conn` is ready for `events` (or has an error
/// or hang-up, which the next read or write reports) or a limit passes.
fn wait(conn: BorrowedFd<'_>, events: PollFlags, clock: &Clock) -> Result<(), End> {
    loop {
        let ms = PollTimeout::try_from(clock.timeout()?).unwrap_or(PollTimeout::NONE);
        match nix::poll::poll(&mut [PollFd::new(conn, events)], ms) {
            Ok(0) => continue, // the loop re-reads the clock and ends the session
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(End::Error(e)),
        }
    }
}

const POLLIN: PollFlags = PollFlags::POLLIN;
const POLLOUT: PollFlags = PollFlags::POLLOUT;

enum Spliced {
    /// No splice here: the pipe cannot be made, or the first splice failed
    /// with `EINVAL`/`ENOSYS` before any byte moved. Copy instead; the peer
    /// cannot tell.
    Unavailable,
    /// The session ended.
    Done(End, u64),
    /// (`Auto` only) A chunk's worth has been echoed: go on copying.
    Bulk(u64),
}

/// `splice(2)` socket -> pipe -> socket, both directions non-blocking
/// (`SPLICE_F_NONBLOCK` for the pipe, `O_NONBLOCK` on the socket), with
/// `poll` in between.
fn echo_splice(conn: BorrowedFd<'_>, until_bulk: bool, clock: &mut Clock) -> Spliced {
    use nix::fcntl::{splice, OFlag, SpliceFFlags};
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let Ok((pr, pw)) = nix::unistd::pipe2(OFlag::O_CLOEXEC) else {
        return Spliced::Unavailable;
    };
    let mut total = 0u64;
    loop {
        let n = match splice(conn, None, &pw, None, SPLICE_CHUNK, flags) {
            Ok(0) => break,
            Ok(n) => n,
            Err(Errno::EAGAIN) => match wait(conn, POLLIN, clock) {
                Ok(()) => continue,
                Err(end) => return Spliced::Done(end, total),
            },
            Err(Errno::EINTR) => continue,
            Err(Errno::EINVAL | Errno::ENOSYS) if total == 0 => return Spliced::Unavailable,
            Err(e) => return Spliced::Done(classify(e), total),
        };
        clock.touch();
        // Drain the pipe completely before reading more: the pipe then never
        // holds more than one chunk, so the first splice never finds it full.
        let mut left = n;
        while left > 0 {
            match splice(&pr, None, conn, None, left, flags) {
                Ok(m) => {
                    left -= m;
                    clock.touch();
                }
                Err(Errno::EAGAIN) => {
                    if let Err(end) = wait(conn, POLLOUT, clock) {
                        return Spliced::Done(end, total);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Spliced::Done(classify(e), total),
            }
        }
        total += n as u64;
        // Splice rarely returns a full chunk on loopback (segments arrive in
        // pieces), so "bulk" is a session that has echoed one chunk in all.
        if until_bulk && total >= SPLICE_CHUNK as u64 {
            return Spliced::Bulk(total);
        }
    }
    Spliced::Done(half_close(conn), total)
}

/// Echoes until end-of-input, then half-closes. Returns the bytes echoed.
fn echo(conn: BorrowedFd<'_>, buf: &mut [u8], mode: Mode, clock: &mut Clock) -> (End, u64) {
    let done = match mode {
        Mode::Copy => 0,
        Mode::Splice | Mode::Auto => match echo_splice(conn, mode == Mode::Auto, clock) {
            Spliced::Done(end, total) => return (end, total),
            Spliced::Bulk(total) => total,
            Spliced::Unavailable => 0,
        },
    };
    let (end, total) = echo_copy(conn, buf, clock);
    (end, done + total)
}

/// `read(2)` then `write(2)` through the buffer; `EAGAIN` waits in `poll`.
/// Reading first (rather than polling first) saves a call whenever the data
/// is already there, which it usually is by the time the child runs.
fn echo_copy(conn: BorrowedFd<'_>, buf: &mut [u8], clock: &mut Clock) -> (End, u64) {
    let mut total = 0u64;
    loop {
        let n = match nix::unistd::read(conn, buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(Errno::EAGAIN) => match wait(conn, POLLIN, clock) {
                Ok(()) => continue,
                Err(end) => return (end, total),
            },
            Err(Errno::EINTR) => continue,
            Err(e) => return (classify(e), total),
        };
        clock.touch();
        if let Err(end) = write_all(conn, &buf[..n], clock) {
            return (end, total);
        }
        total += n as u64;
    }
    (half_close(conn), total)
}

/// All input is echoed: tell the peer we are done too. The kernel sends what
/// is queued before the FIN, so no byte is lost.
fn half_close(conn: BorrowedFd<'_>) -> End {
    match socket::shutdown(conn.as_raw_fd(), Shutdown::Write) {
        Ok(()) | Err(Errno::ENOTCONN) => End::Eof,
        Err(e) => classify(e),
    }
}

/// `write(2)` until every byte is out, waiting in `poll` while the peer's
/// window is full.
fn write_all(conn: BorrowedFd<'_>, mut data: &[u8], clock: &mut Clock) -> Result<(), End> {
    while !data.is_empty() {
        match nix::unistd::write(conn, data) {
            Ok(n) => {
                data = &data[n..];
                clock.touch();
            }
            Err(Errno::EAGAIN) => wait(conn, POLLOUT, clock)?,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(classify(e)),
        }
    }
    Ok(())
}

fn classify(e: Errno) -> End {
    match e {
        Errno::ECONNRESET | Errno::EPIPE | Errno::ETIMEDOUT => End::Reset,
        e => End::Error(e),
    }
}

/// Runs the session and logs its end: an error always; with `-v` one line
/// with the peer, the bytes echoed, the duration and how it ended. The
/// connection must be non-blocking.
pub fn run(
    conn: BorrowedFd<'_>,
    peer: Option<SocketAddr>,
    buf: &mut [u8],
    mode: Mode,
    limits: Limits,
) -> End {
    let mut clock = Clock::new(limits);
    let (end, bytes) = echo(conn, buf, mode, &mut clock);
    let peer = PeerDisplay(peer);
    let took = Secs(clock.start.elapsed());
    match end {
        End::Error(e) => crate::log!(
            Level::Error,
            "connection from {peer} failed after {bytes} bytes in {took}: {}",
            Reason(e)
        ),
        _ => crate::log!(
            Level::Debug,
            "connection from {peer} ended ({}): {bytes} bytes echoed in {took}",
            end.name()
        ),
    }
    end
}

/// A duration as seconds with milliseconds, `12.345s`, without `Debug`.
pub struct Secs(pub Duration);

impl core::fmt::Display for Secs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{:03}s", self.0.as_secs(), self.0.subsec_millis())
    }
}

/// In the child, right after fork: close every descriptor but 0-2, the
/// connection and the ones in `keep` (the log's) — the listeners, the
/// self-pipe, the reserve, the notification socket, and whatever the parent
/// itself inherited without close-on-exec (a supervisor's pipes, a
/// jobserver), which no session should pin open. `close_range(2)` closes the
/// gaps between the kept descriptors; where the kernel lacks it (ENOSYS,
/// before Linux 5.9) this returns false, and the caller closes the
/// descriptors it knows of one by one.
pub fn close_inherited(conn: RawFd, keep: RawFd) -> bool {
    let mut keep = [conn, keep];
    keep.sort_unstable();
    let mut from = 3u32;
    let mut ok = true;
    for fd in keep {
        if fd >= from as i32 {
            if fd > from as i32 {
                ok &= crate::sys::close_range(from, fd as u32 - 1).is_ok();
            }
            from = fd as u32 + 1;
        }
    }
    ok & crate::sys::close_range(from, u32::MAX).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_picks_the_nearer_limit_and_rounds_up() {
        let none = Clock::new(Limits {
            idle: None,
            lifetime: None,
        });
        assert_eq!(none.timeout(), Ok(-1));
        let c = Clock::new(Limits {
            idle: Some(Duration::from_secs(60)),
            lifetime: Some(Duration::from_millis(1500)),
        });
        let ms = c.timeout().unwrap();
        assert!((1..=1500).contains(&ms), "{ms}");
        let mut c = Clock::new(Limits {
            idle: Some(Duration::from_millis(1)),
            lifetime: None,
        });
        c.start -= Duration::from_secs(1);
        c.last -= Duration::from_secs(1);
        assert_eq!(c.timeout(), Err(End::Idle));
    }

    #[test]
    fn secs_format() {
        assert_eq!(Secs(Duration::from_millis(12_345)).to_string(), "12.345s");
        assert_eq!(Secs(Duration::from_millis(7)).to_string(), "0.007s");
    }
}
