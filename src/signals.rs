//! Signals, turned into bytes on a self-pipe that the accept loop polls.
//!
//! Why a self-pipe and not `signalfd`: under QEMU user mode (where this
//! server is tested) the emulator catches host signals itself, so a host
//! signalfd never sees them; a handler that writes to a pipe works everywhere.
//!
//! Why the handled signals stay blocked in the parent except inside `ppoll`:
//! a handler then only ever runs while the loop waits, so nothing else in the
//! parent sees `EINTR`, and `fork` needs no mask juggling: the child starts
//! with the signals blocked, resets the dispositions to their defaults, and
//! only then unblocks. A signal aimed at a new child in between stays pending
//! and then acts as it should (SIGTERM ends the child); it can never run the
//! parent's handler in the child and write into the *shared* pipe, waking the
//! parent with a signal it never got.

use crate::error::{Error, Result};
use core::sync::atomic::{AtomicI32, Ordering};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::PollFd;
use nix::sys::signal::{self, SaFlags, SigSet, SigmaskHow, Signal};
use nix::sys::time::TimeSpec;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// The signals the parent handles through the pipe.
const HANDLED: [Signal; 4] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGUSR1,
];

/// Write end of the pipe, for the handler (which cannot take arguments).
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

/// What the pipe said since the last look. (SIGCHLD needs no flag: the loop
/// reaps on every turn.)
#[derive(Default, Debug, Clone, Copy)]
pub struct Pending {
    pub terminate: bool,
    /// SIGUSR1: write the status line.
    pub status: bool,
}

/// The self-pipe. Both ends are non-blocking (a full pipe must never block
/// the handler; an empty one must never block the loop) and close-on-exec.
pub struct SelfPipe {
    read: OwnedFd,
    write: OwnedFd,
    /// The mask to wait with (and to give children): the one we started
    /// with, without the handled signals.
    wait_mask: SigSet,
}

impl SelfPipe {
    /// `pipe2(2)`, then `sigaction(2)` for SIGCHLD, SIGTERM, SIGINT and
    /// SIGUSR1, `SIG_IGN` for SIGPIPE (a peer that goes away yields `EPIPE`,
    /// not death), and `sigprocmask(2)` blocking the handled signals.
    pub fn install() -> Result<SelfPipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| Error::sys("cannot create the signal pipe", e))?;
        PIPE_WRITE.store(write.as_raw_fd(), Ordering::Relaxed);
        // No SA_RESTART: poll is never restarted anyway, and nothing else in
        // the parent blocks with the signals unblocked.
        // SA_NOCLDSTOP: a stopped child is not an exited one.
        for sig in HANDLED {
            crate::sys::set_handler(sig, on_signal, SaFlags::SA_NOCLDSTOP)
                .map_err(|e| Error::sys("cannot install a signal handler", e))?;
        }
        ignore_sigpipe()?;
        let mut handled = SigSet::empty();
        for sig in HANDLED {
            handled.add(sig);
        }
        let mut wait_mask = SigSet::empty();
        signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled), Some(&mut wait_mask))
            .map_err(|e| Error::sys("cannot block signals", e))?;
        for sig in HANDLED {
            wait_mask.remove(sig);
        }
        Ok(SelfPipe {
            read,
            write,
            wait_mask,
        })
    }

    /// `ppoll(2)` with the handled signals unblocked for the wait only.
    /// `None` waits without limit. `EINTR` means a handler ran (and wrote to
    /// the pipe).
    pub fn ppoll(&self, fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> nix::Result<i32> {
        nix::poll::ppoll(fds, timeout.map(TimeSpec::from), Some(self.wait_mask))
    }

    /// In the child, with the signals still blocked: `sigaction(2)` back to
    /// the default for SIGTERM and SIGINT (so the parent's shutdown ends the
    /// child), then `sigprocmask(2)` to the mask the server started with.
    /// SIGCHLD and SIGUSR1 keep the handler, which now only writes to
    /// descriptor -1: the child has no children, and a SIGUSR1 sent to the
    /// whole process group must not end the sessions. SIGPIPE stays ignored:
    /// a vanished peer must end the session with EPIPE.
    pub fn reset_in_child(&self) {
        PIPE_WRITE.store(-1, Ordering::Relaxed);
        for sig in [Signal::SIGTERM, Signal::SIGINT] {
            let _ = crate::sys::set_disposition(sig, false);
        }
        let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.wait_mask), None);
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Both ends, for the child to close.
    pub fn raw_fds(&self) -> [i32; 2] {
        [self.read.as_raw_fd(), self.write.as_raw_fd()]
    }

    /// Reads everything the handlers wrote: `read(2)` until a short read
    /// (the pipe is then empty; no extra call just to see `EAGAIN`).
    pub fn drain(&self) -> Pending {
        let mut pending = Pending::default();
        let mut buf = [0u8; 64];
        loop {
            match nix::unistd::read(&self.read, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    for &b in &buf[..n] {
                        match b as i32 {
                            nix::libc::SIGTERM | nix::libc::SIGINT => pending.terminate = true,
                            nix::libc::SIGUSR1 => pending.status = true,
                            _ => {}
                        }
                    }
                    if n < buf.len() {
                        break;
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(_) => break, // EAGAIN: empty.
            }
        }
        pending
    }
}

/// `sigaction(SIGPIPE, SIG_IGN)`: a peer that goes away must end a session
/// with `EPIPE`, not kill the process. (Inetd mode; the server does this in
/// `SelfPipe::install`.)
pub fn ignore_sigpipe() -> Result<()> {
    crate::sys::set_disposition(Signal::SIGPIPE, true)
        .map_err(|e| Error::sys("cannot ignore SIGPIPE", e))
}

extern "C" fn on_signal(sig: i32) {
    // The handler interrupts code that may inspect errno right after.
    let saved = Errno::last_raw();
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    // A full pipe (EAGAIN) already holds a wakeup: losing this byte loses
    // nothing.
    let _ = crate::sys::write_raw(fd, &[sig as u8]);
    Errno::set_raw(saved);
}
