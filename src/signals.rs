//! Signals: in the parent, bytes on a self-pipe that the accept loop polls;
//! in a child, a flag that ends the session cleanly.
//!
//! Why a self-pipe and not `signalfd`: under QEMU user mode (where this
//! server is tested) the emulator catches host signals itself, so a host
//! signalfd never sees them; a handler that writes to a pipe works everywhere.
//!
//! Why the handled signals stay blocked except inside `ppoll`: a handler then
//! only ever runs while the process waits, so nothing else sees `EINTR`, a
//! flag checked before the wait cannot miss a signal that comes during it,
//! and `fork` needs no mask juggling: the child starts with the signals
//! blocked and, before it first waits, only marks itself a child (one store,
//! no system call): from then on the inherited handler does the child's part
//! (a stop signal sets the flag, the others do nothing). A signal aimed at a
//! new child before that stays pending and then acts as it should; it can
//! never write into the *shared* pipe, waking the parent with a signal it
//! never got.
//!
//! What each signal does (README, "Signals"):
//! - TERM, INT, QUIT, PWR: the parent stops accepting and drains; a child
//!   echoes what it has read, sends FIN, drains the peer's input and exits —
//!   so a Ctrl-C to the whole process group ends every session cleanly.
//! - USR1, HUP: the parent writes the status line (there is no configuration
//!   to reload); children ignore them.
//! - USR2, ALRM: the parent logs that it ignored them; children ignore them.
//! - PIPE, XFSZ, TTOU: ignored everywhere, so a vanished peer, an oversized
//!   log file or a background terminal give an error on the write instead of
//!   killing or stopping the process.

use crate::error::{Error, Result};
use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::PollFd;
use nix::sys::signal::{self, SaFlags, SigSet, SigmaskHow, Signal};
use nix::sys::time::TimeSpec;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// The signals that end a session, and the server.
const STOP: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGPWR,
];
/// The parent's other handled signals.
const OTHERS: [Signal; 5] = [
    Signal::SIGCHLD,
    Signal::SIGUSR1,
    Signal::SIGHUP,
    Signal::SIGUSR2,
    Signal::SIGALRM,
];
/// Ignored everywhere: their default would kill or stop a process over a
/// failed write.
const IGNORED: [Signal; 3] = [Signal::SIGPIPE, Signal::SIGXFSZ, Signal::SIGTTOU];

/// Write end of the pipe, for the handler (which cannot take arguments).
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
/// In a child: a stop signal arrived.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// What the pipe said since the last look. (SIGCHLD needs no flag: the loop
/// reaps on every turn.)
#[derive(Default, Debug, Clone, Copy)]
pub struct Pending {
    /// The stop signal that came (the first, if several).
    pub terminate: Option<Signal>,
    /// SIGUSR1 or SIGHUP: write the status line.
    pub status: bool,
    /// SIGUSR2 or SIGALRM: logged as ignored.
    pub ignored: Option<Signal>,
}

fn set_of(sigs: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for &sig in sigs {
        set.add(sig);
    }
    set
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
    /// `pipe2(2)`, then `sigaction(2)` for every handled signal, `SIG_IGN`
    /// for the ignored ones, and `sigprocmask(2)` blocking the handled ones.
    pub fn install() -> Result<SelfPipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| Error::sys("cannot create the signal pipe", e))?;
        PIPE_WRITE.store(write.as_raw_fd(), Ordering::Relaxed);
        // No SA_RESTART: poll is never restarted anyway, and nothing else in
        // the parent blocks with the signals unblocked.
        // SA_NOCLDSTOP: a stopped child is not an exited one.
        for sig in STOP.into_iter().chain(OTHERS) {
            crate::sys::set_handler(sig, on_signal, SaFlags::SA_NOCLDSTOP)
                .map_err(|e| Error::sys("cannot install a signal handler", e))?;
        }
        ignore_write_signals()?;
        let wait_mask = block(&[&STOP, &OTHERS])?;
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

    /// In the child, with the signals still blocked: marks the process as a
    /// child, so the inherited handler (`on_signal`) sets the stop flag for a
    /// stop signal and does nothing for the parent's others (a SIGUSR1 or
    /// SIGHUP sent to the whole process group must not end the sessions; the
    /// child has no children to see SIGCHLD). Every handled signal stays
    /// blocked outside the session's waits, as in the parent. Returns the
    /// mask the session waits with.
    ///
    /// Lazy on purpose: swapping dispositions with `sigaction` and setting a
    /// mask cost ten system calls per connection (a third of the total for a
    /// short session); this is one store to a static.
    pub fn reset_in_child(&self) -> SigSet {
        PIPE_WRITE.store(-1, Ordering::Relaxed);
        self.wait_mask
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
                        note(&mut pending, b);
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

/// Files one signal number from the pipe under what it asks for.
fn note(pending: &mut Pending, byte: u8) {
    let Ok(sig) = Signal::try_from(i32::from(byte)) else {
        return;
    };
    match sig {
        Signal::SIGUSR1 | Signal::SIGHUP => pending.status = true,
        Signal::SIGUSR2 | Signal::SIGALRM => pending.ignored = Some(sig),
        s if STOP.contains(&s) => {
            pending.terminate.get_or_insert(s);
        }
        _ => {}
    }
}

/// `sigprocmask(SIG_BLOCK)` of every signal in `sets`; returns the mask we
/// started with, without them: the one to wait with.
fn block(sets: &[&[Signal]]) -> Result<SigSet> {
    let mut handled = SigSet::empty();
    for &sig in sets.iter().copied().flatten() {
        handled.add(sig);
    }
    let mut wait_mask = SigSet::empty();
    signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled), Some(&mut wait_mask))
        .map_err(|e| Error::sys("cannot block signals", e))?;
    for sig in handled.iter() {
        wait_mask.remove(sig);
    }
    Ok(wait_mask)
}

/// The child's handler for the stop signals (in a forked child, or the one
/// `--inetd` process).
fn child_handlers() {
    for sig in STOP {
        let _ = crate::sys::set_handler(sig, on_stop, SaFlags::empty());
    }
}

/// `--inetd`: the same signal set-up as a forked child; returns the mask the
/// session waits with.
pub fn install_for_inetd() -> Result<SigSet> {
    ignore_write_signals()?;
    child_handlers();
    for sig in OTHERS.into_iter().skip(1) {
        let _ = crate::sys::set_disposition(sig, true);
    }
    block(&[&STOP])
}

/// `SIG_IGN` for SIGPIPE (a peer that goes away yields `EPIPE`, not death),
/// SIGXFSZ (a log file at its size limit yields `EFBIG`) and SIGTTOU (a log
/// line to a terminal from a background job yields `EIO`, not a stop).
fn ignore_write_signals() -> Result<()> {
    for sig in IGNORED {
        crate::sys::set_disposition(sig, true)
            .map_err(|e| Error::sys("cannot ignore a signal", e))?;
    }
    Ok(())
}

/// In a child: has a stop signal been handled (during a wait)?
pub fn stop_requested() -> bool {
    STOPPING.load(Ordering::Relaxed)
}

/// In a child: has a stop signal come, handled or still pending (blocked
/// while the session moves bytes without waiting)? One `sigpending(2)`.
pub fn stop_pending() -> bool {
    stop_requested() || crate::sys::pending(&set_of(&STOP))
}

/// In a child: marks the session as stopping, as a stop signal would
/// (shutdown already begun when the child was forked).
pub fn request_stop() {
    STOPPING.store(true, Ordering::Relaxed);
}

extern "C" fn on_signal(sig: i32) {
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd < 0 {
        // A forked child (see `reset_in_child`): a stop ends the session,
        // the parent's other signals are ignored. No system call, so errno
        // is untouched.
        if STOP.iter().any(|&s| s as i32 == sig) {
            STOPPING.store(true, Ordering::Relaxed);
        }
        return;
    }
    // The handler interrupts code that may inspect errno right after.
    let saved = Errno::last_raw();
    // A full pipe (EAGAIN) already holds a wakeup: losing this byte loses
    // nothing.
    let _ = crate::sys::write_raw(fd, &[sig as u8]);
    Errno::set_raw(saved);
}

extern "C" fn on_stop(_: i32) {
    STOPPING.store(true, Ordering::Relaxed);
}
