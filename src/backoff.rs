//! What the accept loop does when `accept` or `fork` fails: retry, drop one
//! connection with the reserve descriptor, or pause the listeners — never
//! spin, and never more than one log line per kind per interval.

use crate::error::Reason;
use crate::limits::{LONG_PAUSE, SHORT_PAUSE};
use crate::listener::{self, Listener};
use crate::log::{Level, LogLimit, PeerDisplay};
use crate::stats::Stats;
use nix::errno::Errno;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

pub struct Backoff {
    /// A descriptor kept only to be given up when `accept` fails with
    /// EMFILE/ENFILE: closing it makes room to accept the pending connection
    /// and close it, so the queue drains instead of spinning the loop.
    reserve: Option<OwnedFd>,
    /// The listeners are not polled before this.
    paused_until: Option<Instant>,
    accept_log: LogLimit,
    fork_log: LogLimit,
}

/// What the accept loop does after an `accept` error.
pub enum Next {
    /// Try the next connection.
    Retry,
    /// Stop accepting from this listener this turn.
    Stop,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff {
            reserve: open_reserve(),
            paused_until: None,
            accept_log: LogLimit::default(),
            fork_log: LogLimit::default(),
        }
    }

    /// The end of the current pause, if one is on (an expired one is
    /// cleared).
    pub fn paused(&mut self, now: Instant) -> Option<Instant> {
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
        }
        self.paused_until
    }

    pub fn is_paused(&self) -> bool {
        self.paused_until.is_some()
    }

    pub fn pause(&mut self, d: Duration) {
        self.paused_until = Some(Instant::now() + d);
    }

    /// The reserve's descriptor, for the child to close where `close_range`
    /// is missing.
    pub fn reserve_fd(&self) -> Option<&OwnedFd> {
        self.reserve.as_ref()
    }

    /// Decides what an `accept` error on listener `l` means.
    pub fn accept_failed(&mut self, e: Errno, l: &Listener, stats: &mut Stats) -> Next {
        match e {
            // The connection died in the queue or a network error was
            // passed on (accept(2), "Error handling"): try the next one.
            Errno::EINTR
            | Errno::ECONNABORTED
            | Errno::EPROTO
            | Errno::ENETDOWN
            | Errno::ENOPROTOOPT
            | Errno::EHOSTDOWN
            | Errno::ENONET
            | Errno::EHOSTUNREACH
            | Errno::EOPNOTSUPP
            | Errno::ENETUNREACH
            | Errno::EPERM => {
                stats.accept_retried += 1;
                return Next::Retry;
            }
            Errno::EAGAIN => {}
            Errno::EMFILE | Errno::ENFILE => self.out_of_descriptors(e, l, stats),
            // ENOBUFS, ENOMEM and anything unexpected: back off.
            _ => {
                stats.accept_paused += 1;
                self.log_accept_error(e, "pausing");
                self.pause(SHORT_PAUSE);
            }
        }
        Next::Stop
    }

    /// EMFILE/ENFILE: the pending connection stays queued and poll would
    /// report it again at once — the classic 100% CPU loop. Give up the
    /// reserve descriptor, accept the connection and close it, take the
    /// reserve back. Without a reserve, stop polling the listeners a while.
    fn out_of_descriptors(&mut self, e: Errno, l: &Listener, stats: &mut Stats) {
        if self.reserve.take().is_some() {
            if let Ok((conn, peer)) = listener::accept(l) {
                drop(conn);
                stats.dropped_no_fd += 1;
                self.log_accept_error(e, "closed a connection");
                crate::log!(
                    Level::Debug,
                    "dropped connection from {}",
                    PeerDisplay(peer)
                );
            }
            self.reserve = open_reserve();
        }
        if self.reserve.is_none() {
            stats.accept_paused += 1;
            self.log_accept_error(e, "pausing");
            self.pause(LONG_PAUSE);
        }
    }

    fn log_accept_error(&mut self, e: Errno, action: &str) {
        if let Some(held) = self.accept_log.allow(Instant::now()) {
            crate::log!(
                Level::Error,
                "accept failed: {}, {action} ({held} similar messages suppressed)",
                Reason(e)
            );
        }
    }

    /// `fork` failed: the connection was closed; pause a moment.
    pub fn fork_failed(&mut self, e: Errno, peer: Option<SocketAddr>, stats: &mut Stats) {
        stats.fork_failed += 1;
        if let Some(held) = self.fork_log.allow(Instant::now()) {
            crate::log!(
                Level::Error,
                "fork failed: {}, closed the connection from {} and pausing ({held} similar messages suppressed)",
                Reason(e),
                PeerDisplay(peer)
            );
        }
        self.pause(SHORT_PAUSE);
    }
}

/// `open("/dev/null")`: the reserve descriptor. `None` where /dev/null is
/// missing (an empty chroot); the loop then falls back to pausing.
fn open_reserve() -> Option<OwnedFd> {
    nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()
}
