//! The echo session, run in the forked child.
//!
//! Everything here works on memory prepared before fork (the buffer) or on the
//! stack; nothing allocates. The child never returns: it ends with `_exit(2)`
//! so no exit handler runs and no buffer inherited from the parent is flushed
//! a second time.

use crate::error::Reason;
use crate::log::Level;
use nix::errno::Errno;
use nix::sys::socket::{self, Shutdown};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed its side; everything was echoed, then we closed ours.
    Eof,
    /// The peer reset the connection or stopped reading (`ECONNRESET`,
    /// `EPIPE`): an ordinary way for a client to leave.
    Reset,
    /// Any other error: worth a log line and a non-zero exit status.
    Error(Errno),
}

impl End {
    fn name(self) -> &'static str {
        match self {
            End::Eof => "eof",
            End::Reset => "reset",
            End::Error(_) => "error",
        }
    }

    /// The child's exit status: 0 for the ways a client may leave, 1 for a
    /// real error, so the parent logs only the latter.
    pub fn status(self) -> i32 {
        match self {
            End::Eof | End::Reset => 0,
            End::Error(_) => 1,
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

/// Bytes moved per splice: the default pipe capacity (16 pages).
const SPLICE_CHUNK: usize = 64 * 1024;

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

fn echo_splice(conn: &OwnedFd, until_bulk: bool) -> Spliced {
    use nix::fcntl::{splice, OFlag, SpliceFFlags};
    let Ok((pr, pw)) = nix::unistd::pipe2(OFlag::O_CLOEXEC) else {
        return Spliced::Unavailable;
    };
    let mut total = 0u64;
    loop {
        let n = match splice(
            conn,
            None,
            &pw,
            None,
            SPLICE_CHUNK,
            SpliceFFlags::SPLICE_F_MOVE,
        ) {
            Ok(0) => break,
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EINVAL | Errno::ENOSYS) if total == 0 => return Spliced::Unavailable,
            Err(e) => return Spliced::Done(classify(e), total),
        };
        // Drain the pipe completely before reading more: the pipe then never
        // holds more than one chunk, so neither splice can block on it.
        let mut left = n;
        while left > 0 {
            match splice(&pr, None, conn, None, left, SpliceFFlags::SPLICE_F_MOVE) {
                Ok(m) => left -= m,
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
pub fn echo(conn: &OwnedFd, buf: &mut [u8], mode: Mode) -> (End, u64) {
    let done = match mode {
        Mode::Copy => 0,
        Mode::Splice | Mode::Auto => match echo_splice(conn, mode == Mode::Auto) {
            Spliced::Done(end, total) => return (end, total),
            Spliced::Bulk(total) => total,
            Spliced::Unavailable => 0,
        },
    };
    let (end, total) = echo_copy(conn, buf);
    (end, done + total)
}

fn echo_copy(conn: &OwnedFd, buf: &mut [u8]) -> (End, u64) {
    let mut total = 0u64;
    loop {
        let n = match nix::unistd::read(conn, buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return (classify(e), total),
        };
        if let Err(e) = write_all(conn, &buf[..n]) {
            return (classify(e), total);
        }
        total += n as u64;
    }
    (half_close(conn), total)
}

/// All input is echoed: tell the peer we are done too. The kernel sends what
/// is queued before the FIN, so no byte is lost.
fn half_close(conn: &OwnedFd) -> End {
    match socket::shutdown(conn.as_raw_fd(), Shutdown::Write) {
        Ok(()) | Err(Errno::ENOTCONN) => End::Eof,
        Err(e) => classify(e),
    }
}

/// `write(2)` until every byte is out: blocking sockets may still write short
/// when a signal arrives mid-way, and `EINTR` is retried.
fn write_all(conn: &OwnedFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        match nix::unistd::write(conn, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
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

/// Runs the session and logs its end: an error always, a normal end with `-v`.
pub fn run(conn: &OwnedFd, peer: Option<SocketAddr>, buf: &mut [u8], mode: Mode) -> End {
    let (end, bytes) = echo(conn, buf, mode);
    let peer = PeerDisplay(peer);
    match end {
        End::Error(e) => crate::log!(
            Level::Error,
            "connection from {peer} failed after {bytes} bytes: {}",
            Reason(e)
        ),
        _ => crate::log!(
            Level::Debug,
            "connection from {peer} ended ({}), {bytes} bytes echoed",
            end.name()
        ),
    }
    end
}

/// A peer address that may be unknown, printed without allocating.
pub struct PeerDisplay(pub Option<SocketAddr>);

impl core::fmt::Display for PeerDisplay {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("unknown peer"),
        }
    }
}

/// `_exit(2)`: leaves without running atexit handlers or flushing stdio
/// buffers copied from the parent.
pub fn exit(status: i32) -> ! {
    // SAFETY: _exit has no preconditions and never returns.
    unsafe { nix::libc::_exit(status) }
}
