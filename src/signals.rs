//! Signals: in the parent, a word of flags that the accept loop reads after
//! each wait; in a child, a flag that ends the session cleanly.
//!
//! Why flags and no self-pipe: the handled signals stay blocked except inside
//! `ppoll` (below), so a handler only ever runs during that wait, which then
//! returns. Setting a bit in a static and reading the word after the wait
//! loses nothing, and saves the pipe's two descriptors and a `write` (in the
//! handler) plus a `read` (in the loop) per signal: per connection, since
//! every child's exit is a SIGCHLD. (Why not `signalfd`: under QEMU user
//! mode, where this server is tested, the emulator catches host signals
//! itself, so a host signalfd never sees them; a handler works everywhere.)
//!
//! Why the handled signals stay blocked except inside `ppoll`: a handler then
//! only ever runs while the process waits, so nothing else sees `EINTR`, a
//! flag checked after the wait cannot miss a signal that comes before it (it
//! stays pending and is delivered in the next wait), and `fork` needs no mask
//! juggling: the child starts with the signals blocked and the inherited
//! handler does the child's part with no set-up at all (it only sets a bit
//! in the child's own copy of the flags: a stop bit ends the session, the
//! others are never read). A signal aimed at a new child can never reach the
//! parent.
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
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use nix::poll::PollFd;
use nix::sys::signal::{self, SaFlags, SigSet, SigmaskHow, Signal};
use nix::sys::time::TimeSpec;
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

/// Bit `n` set: signal `n` was handled since the parent last looked. Every
/// handled signal is below 32. 32 bits, not 64: a lock-free `fetch_or`
/// (async-signal-safe) on every target, ARMv6 included.
static CAUGHT: AtomicU32 = AtomicU32::new(0);
/// In a child: asked to stop before any signal (shutdown had begun at fork).
static STOPPING: AtomicBool = AtomicBool::new(false);

const fn bits(sigs: &[Signal]) -> u32 {
    let mut mask = 0;
    let mut i = 0;
    while i < sigs.len() {
        mask |= 1 << sigs[i] as u32;
        i += 1;
    }
    mask
}
const STOP_BITS: u32 = bits(&STOP);

/// What the handlers caught since the last look.
#[derive(Default, Debug, Clone, Copy)]
pub struct Pending {
    /// SIGCHLD: a child exited, reap.
    pub child: bool,
    /// The stop signal that came (the lowest-numbered, if several came in
    /// one wait).
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

/// The parent's signal handling, installed: the handlers and the mask.
pub struct Signals {
    /// The mask to wait with (and to give children): the one we started
    /// with, without the handled signals.
    wait_mask: SigSet,
}

impl Signals {
    /// `sigaction(2)` for every handled signal, `SIG_IGN` for the ignored
    /// ones, and `sigprocmask(2)` blocking the handled ones.
    pub fn install() -> Result<Signals> {
        // No SA_RESTART: poll is never restarted anyway, and nothing else in
        // the parent blocks with the signals unblocked.
        // SA_NOCLDSTOP: a stopped child is not an exited one.
        for sig in STOP.into_iter().chain(OTHERS) {
            crate::sys::set_handler(sig, on_signal, SaFlags::SA_NOCLDSTOP)
                .map_err(|e| Error::sys("cannot install a signal handler", e))?;
        }
        ignore_write_signals()?;
        let wait_mask = block(&[&STOP, &OTHERS])?;
        Ok(Signals { wait_mask })
    }

    /// `ppoll(2)` with the handled signals unblocked for the wait only.
    /// `None` waits without limit. `EINTR` means a handler ran; a handler may
    /// also run as a wait that found ready descriptors returns, so read
    /// [`Signals::take`] after every wait, whatever it returned.
    pub fn ppoll(&self, fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> nix::Result<i32> {
        nix::poll::ppoll(fds, timeout.map(TimeSpec::from), Some(self.wait_mask))
    }

    /// In the child: the mask the session waits with. Nothing else to do:
    /// the inherited handler only sets bits in the child's own copy of the
    /// flags, of which the child reads the stop ones (a SIGUSR1 or SIGHUP
    /// sent to the whole process group must not end the sessions; the child
    /// has no children to see SIGCHLD). Every handled signal stays blocked
    /// outside the session's waits, as in the parent.
    ///
    /// Lazy on purpose: swapping dispositions with `sigaction` and setting a
    /// mask cost ten system calls per connection (a third of the total for a
    /// short session).
    pub fn reset_in_child(&self) -> SigSet {
        self.wait_mask
    }

    /// In the parent: the signals handled since the last call (a load and a
    /// store, no system call), cleared.
    pub fn take(&self) -> Pending {
        let caught = CAUGHT.swap(0, Ordering::Relaxed);
        let mut pending = Pending::default();
        for sig in (1..32).filter(|n| caught & 1 << n != 0) {
            if let Ok(sig) = Signal::try_from(sig) {
                note(&mut pending, sig);
            }
        }
        pending
    }
}

/// Files one caught signal under what it asks for.
fn note(pending: &mut Pending, sig: Signal) {
    match sig {
        Signal::SIGCHLD => pending.child = true,
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

/// In a child: has a stop signal been handled (during a wait), or was the
/// child asked to stop at fork?
pub fn stop_requested() -> bool {
    STOPPING.load(Ordering::Relaxed) || CAUGHT.load(Ordering::Relaxed) & STOP_BITS != 0
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

/// The handler of every handled signal, parent and forked child alike: one
/// atomic `fetch_or`, async-signal-safe, no system call (errno untouched).
extern "C" fn on_signal(sig: i32) {
    if (1..32).contains(&sig) {
        CAUGHT.fetch_or(1 << sig, Ordering::Relaxed);
    }
}

extern "C" fn on_stop(_: i32) {
    STOPPING.store(true, Ordering::Relaxed);
}
