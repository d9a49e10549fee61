//! The echo session, run in the forked child (or, with `--inetd`, in the
//! only process).
//!
//! The connection is non-blocking and every wait is a `ppoll(2)` with a
//! timeout, so the two session limits hold whatever the peer does:
//! `--idle-timeout` (nothing received or sent for that long; a peer that
//! stops reading stalls our writes and counts as idle too) and
//! `--max-session` (total lifetime). Poll timeouts, not `SO_RCVTIMEO`: they
//! bound writes as well as reads, and QEMU user mode cannot read that
//! option back.
//!
//! Every byte comes back in order, urgent (`MSG_OOB`) ones too: the sockets
//! carry `SO_OOBINLINE`, so the urgent byte sits in the stream; `splice`
//! stops at the urgent mark, which the loop notices (readable, yet nothing
//! spliced) and copies past once with `read`.
//!
//! A session the server ends — a stop signal (shutdown, or the parent making
//! room), `--idle-timeout`, `--max-session` — ends cleanly: what was read is
//! echoed, then FIN, then the peer's further input is read and discarded
//! until it closes or goes quiet, so the kernel has nothing unread at close
//! and sends no RST.
//!
//! Everything here works on memory prepared before fork (the buffer) or on the
//! stack; nothing allocates. The child never returns: it ends with `_exit(2)`
//! so no exit handler runs and no buffer inherited from the parent is flushed
//! a second time.

use crate::error::Reason;
use crate::limits::{DRAIN_MAX, DRAIN_QUIET, SPLICE_CHUNK};
use crate::log::{Level, PeerDisplay};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::SigSet;
use nix::sys::socket::{self, MsgFlags, Shutdown};
use nix::sys::time::TimeSpec;
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
    /// A stop signal ended it cleanly (shutdown, or eviction at the cap).
    Stopped,
    /// Any other error: worth a log line.
    Error(Errno),
}

/// Exit statuses of a child, one per way a session ends.
const EXIT_OK: i32 = 0;
const EXIT_ERROR: i32 = 1;
const EXIT_IDLE: i32 = 2;
const EXIT_LIFETIME: i32 = 3;
const EXIT_STOPPED: i32 = 4;

impl End {
    fn name(self) -> &'static str {
        match self {
            End::Eof => "eof",
            End::Reset => "reset",
            End::Idle => "idle timeout",
            End::Lifetime => "session lifetime",
            End::Stopped => "stopped",
            End::Error(_) => "error",
        }
    }

    /// The child's exit status: 0 for the ways a client may leave, 1 for a
    /// real error (the only one the parent logs), 2 and 3 for the limits, 4
    /// for a stop. Private to parent and child: `--inetd` exits with
    /// [`End::inetd_status`].
    pub fn status(self) -> i32 {
        match self {
            End::Eof | End::Reset => EXIT_OK,
            End::Error(_) => EXIT_ERROR,
            End::Idle => EXIT_IDLE,
            End::Lifetime => EXIT_LIFETIME,
            End::Stopped => EXIT_STOPPED,
        }
    }

    /// `--inetd`'s exit status: 0 whenever the session ended as sessions do
    /// (the peer left, a limit, a stop), 1 on an error. A service manager
    /// reads non-zero as a failed instance, and 2 is the usage-error status.
    pub fn inetd_status(self) -> i32 {
        match self {
            End::Error(_) => EXIT_ERROR,
            _ => EXIT_OK,
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
            EXIT_STOPPED => End::Stopped,
            _ => End::Error(Errno::UnknownErrno),
        }
    }
}

/// How the child moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Copy while messages are short (each read under 512 bytes), then
    /// splice until the session proves to be bulk (64 KiB echoed), then
    /// copy. Short exchanges are cheapest copied (no pipe to make, half the
    /// calls of splicing), copy is faster for streams, and splice sits
    /// between. The default.
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
    /// The echo buffer, mapped once and inherited by every child (only
    /// copying touches it; `sys::zeroed_pages`: no page of it is populated
    /// in the parent).
    pub buf: &'static mut [u8],
    pub mode: Mode,
    pub limits: Limits,
}

impl Setup {
    /// Serves one connection; `mask` is the signal mask to wait with, `slot`
    /// the child's in the shared activity table.
    pub fn serve(
        &mut self,
        conn: BorrowedFd<'_>,
        peer: Option<SocketAddr>,
        mask: SigSet,
        slot: usize,
    ) -> End {
        let mut s = Session {
            conn,
            buf: self.buf,
            clock: Clock::new(self.limits, Some(slot)),
            mask,
            unchecked: 0,
            sole: true,
        };
        s.run(peer, self.mode)
    }
}

/// The two session limits; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub idle: Option<Duration>,
    pub lifetime: Option<Duration>,
}

/// The session's clock: when it started and when a byte last moved. Each
/// move is also posted to the child's slot in the shared table, which is how
/// the parent tells idle sessions from busy ones.
struct Clock {
    limits: Limits,
    start: Instant,
    last: Instant,
    slot: Option<usize>,
}

impl Clock {
    fn new(limits: Limits, slot: Option<usize>) -> Clock {
        let now = Instant::now();
        Clock {
            limits,
            start: now,
            last: now,
            slot,
        }
    }

    fn touch(&mut self) {
        if self.limits.idle.is_some() {
            self.last = Instant::now();
        }
        if let Some(slot) = self.slot {
            crate::shared::touch(slot);
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

/// A session in progress.
struct Session<'a> {
    conn: BorrowedFd<'a>,
    buf: &'a mut [u8],
    clock: Clock,
    /// The signal mask to wait with: it unblocks the stop signals.
    mask: SigSet,
    /// Bytes moved since the last look for a pending stop signal.
    unchecked: usize,
    /// A forked child's: no other process keeps the connection open once
    /// the parent has closed its copy (see [`Session::at_eof`]).
    sole: bool,
}

/// What a splice session came to.
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

/// The window `Auto` copies through before it splices: a read that fills it
/// ends the short-exchange phase. Well within the smallest `--buffer-size`.
const SMALL: usize = 512;

const POLLIN: PollFlags = PollFlags::POLLIN;
const POLLOUT: PollFlags = PollFlags::POLLOUT;

impl Session<'_> {
    /// Runs the session and logs its end: an error always; with `-v` one
    /// line with the peer, the bytes echoed, the duration and how it ended.
    fn run(&mut self, peer: Option<SocketAddr>, mode: Mode) -> End {
        let (mut end, bytes) = self.echo(mode);
        // A session the server ends (a stop, a limit) ends cleanly too.
        if matches!(end, End::Stopped | End::Idle | End::Lifetime) {
            if let Err(e) = self.finish() {
                end = e;
            }
        }
        let peer = PeerDisplay(peer);
        let took = Secs(self.clock.start.elapsed());
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

    /// Echoes until end-of-input, then half-closes. Returns the bytes echoed.
    fn echo(&mut self, mode: Mode) -> (End, u64) {
        let mut done = 0;
        if mode == Mode::Auto {
            match self.small() {
                Ok(total) => done = total,
                Err(end) => return end,
            }
        }
        done += match mode {
            Mode::Copy => 0,
            Mode::Splice | Mode::Auto => match self.splice(mode == Mode::Auto) {
                Spliced::Done(end, total) => return (end, done + total),
                Spliced::Bulk(total) => total,
                Spliced::Unavailable => 0,
            },
        };
        let (end, total) = self.copy();
        (end, done + total)
    }

    /// `Auto`'s first phase: `read`/`write` through [`SMALL`] bytes of
    /// stack, for as long as reads come back shorter than that. A short exchange (a line, a request) then costs one `read` and
    /// one `write` per message and no pipe at all, where splicing costs
    /// `pipe2`, two splices per message and an extra splice and `read` at the
    /// end. A read that fills the window says "stream": that chunk is
    /// echoed, then splicing takes over (`Ok` with the bytes so far).
    ///
    /// On the stack, not in the buffer: the buffer's pages are untouched
    /// until a child copies, and a page of it written here would be one more
    /// private page per idle child, where the stack's are private anyway.
    fn small(&mut self) -> Result<u64, (End, u64)> {
        let mut small = [0u8; SMALL];
        let mut total = 0u64;
        loop {
            let n = match self.read_into(&mut small) {
                Ok(Some(0)) => continue,
                Ok(Some(n)) => n,
                Ok(None) => return Err((self.at_eof(), total)),
                Err(end) => return Err((end, total)),
            };
            total += n as u64;
            if let Err(end) = self.moved(n) {
                return Err((end, total));
            }
            if n == SMALL {
                return Ok(total);
            }
        }
    }

    /// Waits until the connection is ready for `events` or a limit passes.
    /// A stop ends a wait for input, not one for output: what was read is
    /// echoed first.
    fn wait(&mut self, events: PollFlags) -> Result<(), End> {
        loop {
            if events == POLLIN && crate::signals::stop_requested() {
                return Err(End::Stopped);
            }
            let ms = self.clock.timeout()?;
            let timeout = u64::try_from(ms)
                .ok()
                .map(|ms| TimeSpec::from(Duration::from_millis(ms)));
            let mut fds = [PollFd::new(self.conn, events)];
            match nix::poll::ppoll(&mut fds, timeout, Some(self.mask)) {
                Ok(0) | Err(Errno::EINTR) => continue, // the clock or the flag decides
                Ok(_) => return Ok(()),
                Err(e) => return Err(End::Error(e)),
            }
        }
    }

    /// Bytes moved: the clock, and every chunk's worth a look for a stop
    /// signal that a stream which never waits would otherwise not see (the
    /// stop signals are blocked outside the wait).
    fn moved(&mut self, n: usize) -> Result<(), End> {
        self.clock.touch();
        self.unchecked += n;
        if self.unchecked >= SPLICE_CHUNK {
            self.unchecked = 0;
            if crate::signals::stop_pending() {
                return Err(End::Stopped);
            }
        }
        Ok(())
    }

    /// `read(2)` then `write(2)` through the buffer; `EAGAIN` waits in
    /// `ppoll`. Reading first (rather than polling first) saves a call
    /// whenever the data is already there, which it usually is by the time
    /// the child runs.
    fn copy(&mut self) -> (End, u64) {
        let mut total = 0u64;
        loop {
            let n = match self.read_once() {
                Ok(Some(0)) => continue,
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(end) => return (end, total),
            };
            total += n as u64;
            if let Err(end) = self.moved(n) {
                return (end, total);
            }
        }
        (self.at_eof(), total)
    }

    /// One `read(2)` into the buffer and the echo of what it got: `Some(n)`
    /// bytes echoed (0 after a wait), `None` at end-of-input.
    fn read_once(&mut self) -> Result<Option<usize>, End> {
        // Out of `self` for the call, so the read and write can borrow both.
        let buf = core::mem::take(&mut self.buf);
        let r = self.read_into(buf);
        self.buf = buf;
        r
    }

    /// One `read(2)` into `buf` and the echo of what it got, as
    /// [`Session::read_once`].
    fn read_into(&mut self, buf: &mut [u8]) -> Result<Option<usize>, End> {
        if crate::signals::stop_requested() {
            return Err(End::Stopped);
        }
        let n = match nix::unistd::read(self.conn, &mut *buf) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(Errno::EAGAIN) => return self.wait(POLLIN).map(|()| Some(0)),
            Err(Errno::EINTR) => return Ok(Some(0)),
            Err(e) => return Err(classify(e)),
        };
        self.clock.touch();
        self.write_all(&buf[..n])?;
        Ok(Some(n))
    }

    /// `write(2)` until all of `bytes` is out, waiting in `ppoll` while the
    /// peer's window is full.
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), End> {
        let mut at = 0;
        while at < bytes.len() {
            match nix::unistd::write(self.conn, &bytes[at..]) {
                Ok(m) => {
                    at += m;
                    self.clock.touch();
                }
                Err(Errno::EAGAIN) => self.wait(POLLOUT)?,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(classify(e)),
            }
        }
        Ok(())
    }

    /// `splice(2)` socket -> pipe -> socket, both directions non-blocking
    /// (`SPLICE_F_NONBLOCK` for the pipe, `O_NONBLOCK` on the socket), with
    /// `ppoll` in between.
    fn splice(&mut self, until_bulk: bool) -> Spliced {
        use nix::fcntl::{splice, OFlag, SpliceFFlags};
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        let Ok((pr, pw)) = nix::unistd::pipe2(OFlag::O_CLOEXEC) else {
            return Spliced::Unavailable;
        };
        let mut total = 0u64;
        // The last wait said "readable": an EAGAIN now is the urgent mark.
        let mut ready = false;
        loop {
            if crate::signals::stop_requested() {
                return Spliced::Done(End::Stopped, total);
            }
            let spliced = splice(self.conn, None, &pw, None, SPLICE_CHUNK, flags);
            // splice will not cross an urgent mark: there it says EAGAIN
            // although the socket is readable, or 0 once the FIN is in
            // although bytes remain. One read crosses the mark (and tells a
            // real end of input apart).
            if spliced == Ok(0) || (ready && spliced == Err(Errno::EAGAIN)) {
                ready = false;
                match self.read_once() {
                    Ok(Some(n)) => total += n as u64,
                    Ok(None) => break,
                    Err(end) => return Spliced::Done(end, total),
                }
                continue;
            }
            let n = match spliced {
                Ok(n) => n,
                Err(Errno::EAGAIN) => match self.wait(POLLIN) {
                    Ok(()) => {
                        ready = true;
                        continue;
                    }
                    Err(end) => return Spliced::Done(end, total),
                },
                Err(Errno::EINTR) => continue,
                Err(Errno::EINVAL | Errno::ENOSYS) if total == 0 => return Spliced::Unavailable,
                Err(e) => return Spliced::Done(classify(e), total),
            };
            ready = false;
            self.clock.touch();
            if let Err(end) = self.unsplice(&pr, n) {
                return Spliced::Done(end, total);
            }
            total += n as u64;
            if let Err(end) = self.moved(n) {
                return Spliced::Done(end, total);
            }
            // Splice rarely returns a full chunk on loopback (segments arrive
            // in pieces), so "bulk" is a session that has echoed one chunk in
            // all.
            if until_bulk && total >= SPLICE_CHUNK as u64 {
                return Spliced::Bulk(total);
            }
        }
        Spliced::Done(self.at_eof(), total)
    }

    /// Drains the pipe completely before reading more: the pipe then never
    /// holds more than one chunk, so the first splice never finds it full.
    fn unsplice(&mut self, pr: &std::os::fd::OwnedFd, mut left: usize) -> Result<(), End> {
        use nix::fcntl::{splice, SpliceFFlags};
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        while left > 0 {
            match splice(pr, None, self.conn, None, left, flags) {
                Ok(m) => {
                    left -= m;
                    self.clock.touch();
                }
                Err(Errno::EAGAIN) => self.wait(POLLOUT)?,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(classify(e)),
            }
        }
        Ok(())
    }

    /// The peer sent EOF and every byte is echoed: the session is over.
    ///
    /// A forked child needs no `shutdown(2)` for its FIN (a system call per
    /// connection): it exits at once, and closing a socket with nothing left
    /// unread sends FIN after what is queued, as `shutdown` would. The parent
    /// closes its copy right after `fork`, so the child's is the last (in
    /// the rare case the parent has not got there yet, the FIN leaves when
    /// it does, a moment later). `--inetd` may share the socket with its
    /// launcher, which can keep a copy open: there `shutdown` says it.
    fn at_eof(&self) -> End {
        match self.sole {
            true => End::Eof,
            false => half_close(self.conn),
        }
    }

    /// When the server ends a session: FIN (everything read has been
    /// echoed), then read and discard the peer's input until it closes its
    /// side or stays quiet for [`DRAIN_QUIET`], so nothing is left unread
    /// when the socket closes and the kernel sends no RST. A peer that keeps
    /// sending is cut off after [`DRAIN_MAX`] in all. `MSG_TRUNC` makes the
    /// kernel drop the bytes without copying them.
    fn finish(&mut self) -> Result<(), End> {
        if let End::Error(e) = half_close(self.conn) {
            return Err(classify(e));
        }
        let quiet = PollTimeout::try_from(DRAIN_QUIET).unwrap_or(PollTimeout::ZERO);
        let flags = MsgFlags::MSG_TRUNC | MsgFlags::MSG_DONTWAIT;
        let until = Instant::now() + DRAIN_MAX;
        while Instant::now() < until {
            match socket::recv(self.conn.as_raw_fd(), self.buf, flags) {
                Ok(0) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    match nix::poll::poll(&mut [PollFd::new(self.conn, POLLIN)], quiet) {
                        Ok(0) => break,
                        Ok(_) | Err(Errno::EINTR) => continue,
                        Err(_) => break,
                    }
                }
                Err(_) => break,
            }
        }
        Ok(())
    }
}

/// All input is echoed: tell the peer we are done too. The kernel sends what
/// is queued before the FIN, so no byte is lost.
fn half_close(conn: BorrowedFd<'_>) -> End {
    match socket::shutdown(conn.as_raw_fd(), Shutdown::Write) {
        Ok(()) | Err(Errno::ENOTCONN) => End::Eof,
        Err(e) => classify(e),
    }
}

fn classify(e: Errno) -> End {
    match e {
        Errno::ECONNRESET | Errno::EPIPE | Errno::ETIMEDOUT => End::Reset,
        e => End::Error(e),
    }
}

/// Runs a session outside the forked server (`--inetd`): no shared slot.
pub fn run(
    conn: BorrowedFd<'_>,
    peer: Option<SocketAddr>,
    buf: &mut [u8],
    mode: Mode,
    limits: Limits,
    mask: SigSet,
) -> End {
    let mut s = Session {
        conn,
        buf,
        clock: Clock::new(limits, None),
        mask,
        unchecked: 0,
        sole: false,
    };
    s.run(peer, mode)
}

/// A duration as seconds with milliseconds, `12.345s`, without `Debug`.
pub struct Secs(pub Duration);

impl core::fmt::Display for Secs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{:03}s", self.0.as_secs(), self.0.subsec_millis())
    }
}

/// In the child, right after fork: close every descriptor but 0-2, the
/// connection and `keep` (the syslog socket) — the listeners, the reserve,
/// the notification socket, and whatever the parent
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
        let none = Clock::new(
            Limits {
                idle: None,
                lifetime: None,
            },
            None,
        );
        assert_eq!(none.timeout(), Ok(-1));
        let c = Clock::new(
            Limits {
                idle: Some(Duration::from_secs(60)),
                lifetime: Some(Duration::from_millis(1500)),
            },
            None,
        );
        let ms = c.timeout().unwrap();
        assert!((1..=1500).contains(&ms), "{ms}");
        let mut c = Clock::new(
            Limits {
                idle: Some(Duration::from_millis(1)),
                lifetime: None,
            },
            None,
        );
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
