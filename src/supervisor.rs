//! The parent: one `ppoll(2)` loop over the listeners that accepts, forks,
//! reaps and shuts down; signals interrupt the wait and leave flags.
//!
//! Shape of a turn (after s6-tcpserverd):
//! 1. wait for a signal always, on the listeners only while accepting —
//!    below `--max-children`, or at it with a session idle for
//!    `--evict-after` that can make room, and not paused. Otherwise new
//!    clients wait in the kernel backlog instead of being accepted and
//!    dropped;
//! 2. take the signals' flags; after a SIGCHLD, reap *every* exited child;
//! 3. accept from the ready listeners: admit or refuse, fork one child per
//!    admitted connection.
//!
//! The loop only sequences; each step is another module's: the child table
//! and reaper (`children`), the verdict (`admission::Gate`), the failure
//! policy (`backoff`), the child's side of the fork (`session`). Nothing here
//! allocates after start-up: the tables are fixed, the poll set lives on the
//! stack, log lines are formatted into fixed storage.

use crate::activation::Readiness;
use crate::admission::Gate;
use crate::backoff::{Backoff, Next};
use crate::children::Children;
use crate::error::Reason;
use crate::limits::{ACCEPT_BATCH, MAX_LISTENERS, MAX_UDP, SHORT_PAUSE};
use crate::listener::{self, Listeners};
use crate::log::{Level, PeerDisplay};
use crate::metrics::Metrics;
use crate::sandbox::Sandbox;
use crate::session;
use crate::signals::Signals;
use crate::stats::{Stats, Status};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::Signal;
use nix::unistd::ForkResult;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The loop's own settings.
pub struct Settings {
    /// `--max-children`: at this many live children the listeners rest,
    /// unless an idle one can make room.
    pub max_children: usize,
    /// `--evict-after`: how long a session must have been idle before it may
    /// be ended for a newcomer at the cap; `None` never.
    pub evict_after: Option<Duration>,
    /// `--shutdown-timeout`: how long children get after SIGTERM.
    pub shutdown_timeout: Duration,
}

pub struct Supervisor {
    /// The bound listeners, polled while accepting.
    listeners: Listeners,
    /// The handlers and the wait mask: a signal, or a ready listener, is the
    /// loop's only wake-up.
    signals: Signals,
    /// What the loop writes on every connection, in a mapping children do
    /// not get, so that no write of it after a fork copies a page (see
    /// [`Hot`]).
    hot: crate::sys::ParentBox<Hot>,
    /// What each child serves with: the buffer, the echo mode, the limits.
    setup: session::Setup,
    /// What to do when `accept` or `fork` fails: retry, reserve, pause.
    backoff: Backoff,
    /// READY=1 / STOPPING=1 and `--ready-fd`.
    readiness: Readiness,
    settings: Settings,
    /// Set once shutdown began: children forked now start stopping.
    stopping: bool,
    /// Whether each child installs the seccomp filter.
    sandbox: Sandbox,
    /// `--metrics-file`, written on a timer the loop's wait honours.
    metrics: Metrics,
    /// The UDP echo: polled always (it needs no child and no descriptor),
    /// served after accepting, a bounded batch per turn.
    udp: crate::udp::Udp,
    #[cfg(feature = "alloc-count")]
    alloc_in_child: bool,
}

/// The parent's state that changes with every connection. It lives in a
/// mapping no child gets ([`crate::sys::ParentBox`]): on the stack or the
/// heap, each page of it the parent writes after a fork would be a
/// copy-on-write fault in the parent and an old copy left private to every
/// live child (8 KiB of each idle child's memory, measured). Children never
/// read or write it (the child's side of the fork uses only the
/// supervisor's other fields), and do not even map it: no session holds
/// the other clients' addresses.
struct Hot {
    /// Live children, their sources, and the reaper.
    children: Children,
    /// Admission: rules, rates, per-source limits, what a refused client
    /// hears.
    gate: Gate,
    stats: Stats,
    /// Whether the last turn found the loop at `--max-children` (the cap is
    /// counted once per episode).
    at_cap: bool,
}

impl Supervisor {
    /// Takes the bound listeners, the installed signal handling and the prepared
    /// parts; opens the reserve descriptor. The last allocations the parent
    /// makes happen before this returns.
    pub fn new(
        listeners: Listeners,
        signals: Signals,
        readiness: Readiness,
        gate: Gate,
        setup: session::Setup,
        settings: Settings,
        metrics: Metrics,
    ) -> Self {
        Supervisor {
            listeners,
            signals,
            hot: crate::sys::ParentBox::new(Hot {
                children: Children::default(),
                gate,
                stats: Stats::default(),
                at_cap: false,
            }),
            setup,
            backoff: Backoff::new(),
            readiness,
            settings,
            stopping: false,
            sandbox: Sandbox::default(),
            metrics,
            udp: crate::udp::Udp::default(),
            // Test hook: proves the allocation check can fail.
            #[cfg(feature = "alloc-count")]
            alloc_in_child: std::env::var_os("FORKECHO_TEST_ALLOC_IN_CHILD").is_some(),
        }
    }

    /// Whether children install the seccomp filter: decided after the
    /// privilege drop (off until then).
    pub fn sandbox(&mut self, sandbox: Sandbox) {
        self.sandbox = sandbox;
    }

    /// Adds the UDP echo's sockets (`--udp`, or passed by systemd).
    pub fn with_udp(mut self, udp: crate::udp::Udp) -> Self {
        self.hot.stats.udp.enabled = !udp.sockets().is_empty();
        self.udp = udp;
        self
    }

    /// One "listening on" line per listener, with the port really bound, so
    /// `--listen 127.0.0.1:0` is usable from scripts and tests; then the
    /// readiness signals.
    pub fn announce(&mut self) {
        for l in &self.listeners {
            crate::log!(Level::Info, "listening on {}", l.local);
        }
        for s in self.udp.sockets() {
            crate::log!(Level::Info, "listening on udp {}", s.local);
        }
        let port = self.listeners.first().map_or(0, |l| l.local.port());
        self.readiness.ready(port);
    }

    /// Serves until a stop signal, then drains the children.
    pub fn run(mut self) {
        crate::log::report_drops_here();
        #[cfg(feature = "alloc-count")]
        let base = crate::alloc_count::count();
        self.hot.children.check_strangers();
        // After the privilege drop: the file belongs to the user that keeps
        // replacing it.
        self.export();
        crate::sys::release_stack_below_caller();
        let stop = loop {
            let ready = self.wait();
            // Only SIGCHLD means an exited child, and its handler only runs
            // in the wait (it is blocked outside `ppoll`, so one that comes
            // between waits is delivered at the next): a turn without it has
            // nothing to reap, and the `wait4` saying so was a wasted call
            // per connection.
            let pending = self.signals.take();
            if pending.child {
                let hot = &mut *self.hot;
                hot.children.reap(&mut hot.stats);
            }
            // The file first: once the status line is out, it is in place.
            if pending.status || self.metrics.due(Instant::now()) {
                self.export();
            }
            if pending.status {
                self.log_status();
            }
            if let Some(sig) = pending.ignored {
                crate::log!(Level::Info, "ignoring {}", sig.as_str());
            }
            if let Some(sig) = pending.terminate {
                break sig;
            }
            for i in 0..self.listeners.len() {
                if ready & (1 << i) != 0 {
                    self.accept_from(i);
                }
            }
            let hot = &mut *self.hot;
            self.udp.serve(&mut hot.gate, &mut hot.stats.udp);
        };
        self.shutdown(stop);
        #[cfg(feature = "alloc-count")]
        crate::alloc_count::report("parent", base);
    }

    /// Waits; returns a bit mask of the listeners that are ready. What the
    /// handlers caught meanwhile is for [`Signals::take`].
    fn wait(&mut self) -> u32 {
        let now = Instant::now();
        let paused = self.backoff.paused(now);
        let at_cap = self.hot.children.active() >= self.settings.max_children;
        if at_cap && !self.hot.at_cap {
            self.hot.stats.cap_reached += 1;
        }
        self.hot.at_cap = at_cap;
        // At the cap, the listeners are polled only once a session is idle
        // enough to make room; until then, wake when the idlest could be.
        let (room, wake) = match self.room() {
            Ok(()) => (true, None),
            Err(wake) => (false, wake),
        };
        let mut fds: heapless::Vec<PollFd<'_>, { MAX_LISTENERS + MAX_UDP }> = heapless::Vec::new();
        if paused.is_none() && room {
            for l in &self.listeners {
                let _ = fds.push(PollFd::new(l.fd.as_fd(), PollFlags::POLLIN));
            }
        }
        let first_udp = fds.len();
        for s in self.udp.sockets() {
            let _ = fds.push(PollFd::new(s.fd.as_fd(), PollFlags::POLLIN));
        }
        let due = self
            .metrics
            .next_due()
            .map(|t| t.saturating_duration_since(now));
        let timeout = [paused.map(|t| t.saturating_duration_since(now)), wake, due]
            .into_iter()
            .flatten()
            .min();
        let failed = match self.signals.ppoll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => None,
            Err(e) => Some(e),
        };
        let mask = |fds: &[PollFd<'_>]| {
            (fds.iter().enumerate())
                .filter(|(_, fd)| fd.any().unwrap_or(false))
                .fold(0u32, |mask, (i, _)| mask | 1 << i)
        };
        let (ready, udp_ready) = (mask(&fds[..first_udp]), mask(&fds[first_udp..]));
        drop(fds);
        self.udp
            .set_ready(if failed.is_some() { 0 } else { udp_ready });
        if let Some(e) = failed {
            // Cannot happen with valid descriptors; never spin on it.
            crate::log!(Level::Error, "poll failed: {}", Reason(e));
            self.backoff.pause(SHORT_PAUSE);
            return 0;
        }
        ready
    }

    /// Whether a newcomer can be taken: below the cap, or at it with a
    /// session idle long enough to end for it. `Err(wake)`: not now, and
    /// when to look again (`None`: only when a child exits).
    fn room(&self) -> Result<(), Option<Duration>> {
        if !self.hot.children.has_room() {
            return Err(None);
        }
        if self.hot.children.active() < self.settings.max_children {
            return Ok(());
        }
        let min = self.settings.evict_after.ok_or(None)?;
        self.hot.children.idlest(min).map(drop)
    }

    /// Writes `--metrics-file` (if given) with the counters as they are.
    fn export(&mut self) {
        let status = Self::status(&self.hot);
        self.metrics.write(&status, Instant::now());
    }

    /// SIGUSR1: one line with every counter, always written (even with -q:
    /// it was asked for).
    fn log_status(&self) {
        crate::log!(Level::Error, "{}", Self::status(&self.hot));
    }

    /// The counters as they are, for the status line and the metrics file.
    fn status(hot: &Hot) -> Status<'_> {
        Status {
            active: hot.children.len(),
            stats: &hot.stats,
            log_dropped: crate::shared::dropped_total(),
        }
    }

    /// Accepts one connection from a ready listener, past at most
    /// [`ACCEPT_BATCH`] errors that `backoff` says to retry (`ECONNABORTED`:
    /// a connection that died in the queue, ...).
    ///
    /// One per listener per turn, not a batch until `EAGAIN`: the call that
    /// only says `EAGAIN` is one per connection when connections come one at
    /// a time, and when more wait the next `ppoll` reports the listener
    /// ready at once. Measured at c=32 (bench/run.sh, 4 rounds): no slower
    /// than batches of 16, or than batching only after a turn that accepted
    /// (8,811 vs 8,284 and 8,121 conn/s, ±8-15%); and reaping and the other
    /// listeners get a turn between any two connections.
    fn accept_from(&mut self, i: usize) {
        for _ in 0..ACCEPT_BATCH {
            if self.room().is_err() || self.backoff.is_paused() {
                return;
            }
            match listener::accept(&self.listeners[i]) {
                Ok((conn, peer)) => return self.admit(conn, peer),
                Err(e) => {
                    let l = &self.listeners[i];
                    if let Next::Stop = self.backoff.accept_failed(e, l, &mut self.hot.stats) {
                        return;
                    }
                }
            }
        }
    }

    /// The verdict on a fresh connection; an admitted one at the cap first
    /// ends the idlest session to make room.
    fn admit(&mut self, conn: OwnedFd, peer: Option<SocketAddr>) {
        let hot = &mut *self.hot;
        let live = |key| hot.children.live_from(key);
        match hot.gate.check(peer, live, Instant::now()) {
            Ok(key) => {
                if self.hot.children.active() >= self.settings.max_children {
                    self.make_room();
                }
                self.spawn(conn, peer, key);
            }
            Err(why) => {
                self.hot.stats.refused(why);
                self.hot.gate.refuse(conn, peer, why);
            }
        }
    }

    /// Ends the session idle longest (checked by `room` a moment ago): it
    /// finishes cleanly on its own and no longer counts against the cap.
    fn make_room(&mut self) {
        if let Some(i) =
            (self.settings.evict_after).and_then(|min| self.hot.children.idlest(min).ok())
        {
            let pid = self.hot.children.evict(i);
            self.hot.stats.evicted += 1;
            crate::log!(
                Level::Debug,
                "ending idle child {pid} to make room at --max-children"
            );
        }
    }

    /// Forks one child for `conn`. The handled signals are blocked (they
    /// always are outside `ppoll`, see `signals`); the parent closes its copy
    /// of the connection first thing.
    fn spawn(&mut self, conn: OwnedFd, peer: Option<SocketAddr>, key: Option<u128>) {
        // A local, not a field: the child reads its copy of this frame, and
        // the parent writes nothing of its own after the fork but `hot`.
        let slot = self.hot.children.free_slot();
        match crate::sys::fork() {
            Ok(ForkResult::Child) => self.child(conn, peer, slot),
            Ok(ForkResult::Parent { child }) => {
                drop(conn);
                self.hot.stats.accepted += 1;
                self.hot.children.add(child, key, slot);
                crate::log!(
                    Level::Debug,
                    "connection from {} served by child {child}",
                    PeerDisplay(peer)
                );
            }
            Err(e) => {
                drop(conn);
                self.backoff.fork_failed(e, peer, &mut self.hot.stats);
            }
        }
    }

    /// The child, right after fork: close every descriptor it must not hold,
    /// take the session's signal mask, enter the sandbox, echo, `_exit`.
    fn child(&mut self, conn: OwnedFd, peer: Option<SocketAddr>, slot: usize) -> ! {
        #[cfg(feature = "alloc-count")]
        let base = crate::alloc_count::count();
        if !session::close_inherited(conn.as_raw_fd(), crate::log::syslog_fd()) {
            self.close_own_fds();
        }
        let mask = self.signals.reset_in_child();
        if self.stopping {
            crate::signals::request_stop();
        }
        self.sandbox.enter(peer);
        #[cfg(feature = "alloc-count")]
        if self.alloc_in_child {
            core::hint::black_box(Box::new(0u64));
        }
        let end = self.setup.serve(conn.as_fd(), peer, mask, slot);
        #[cfg(feature = "alloc-count")]
        crate::alloc_count::report("child", base);
        crate::sys::exit(end.status())
    }

    /// Closes, in a child, every descriptor the parent holds of its own
    /// (listeners, reserve, readiness): the fallback where
    /// `close_range` is missing. By number: the child never drops them.
    fn close_own_fds(&self) {
        for l in &self.listeners {
            crate::sys::close_raw(l.fd.as_raw_fd());
        }
        for s in self.udp.sockets() {
            crate::sys::close_raw(s.fd.as_raw_fd());
        }
        if let Some(r) = self.backoff.reserve_fd() {
            crate::sys::close_raw(r.as_raw_fd());
        }
        self.readiness.close_in_child();
        self.metrics.close_in_child();
    }

    /// A stop signal: every session ends cleanly within
    /// `--shutdown-timeout`. The children get SIGTERM (each echoes what it
    /// has read, sends FIN and drains its peer); clients still in the
    /// backlog are accepted and given the same clean end rather than a reset
    /// from a closed listener; a listener closes once its backlog is empty.
    /// Children still running at the deadline are killed.
    fn shutdown(&mut self, sig: Signal) {
        self.readiness.stopping();
        self.stopping = true;
        self.hot.children.signal_all(Signal::SIGTERM);
        let deadline = Instant::now() + self.settings.shutdown_timeout;
        let mut killed = 0;
        loop {
            let hot = &mut *self.hot;
            hot.children.reap(&mut hot.stats);
            self.drain_backlogs();
            if self.hot.children.is_empty() && self.listeners.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                killed = self.kill_remaining();
                break;
            }
            let mut fds: heapless::Vec<PollFd<'_>, MAX_LISTENERS> = heapless::Vec::new();
            if self.room().is_ok() {
                for l in &self.listeners {
                    let _ = fds.push(PollFd::new(l.fd.as_fd(), PollFlags::POLLIN));
                }
            }
            let _ = self.signals.ppoll(&mut fds, Some(deadline - now));
            drop(fds);
            // Every wake-up reaps (above): the flags only need clearing.
            self.signals.take();
        }
        self.listeners.clear();
        self.export();
        crate::log!(
            Level::Info,
            "stopped by {}: {} sessions ended, {killed} killed",
            sig.as_str(),
            self.hot.stats.stopped
        );
    }

    /// During shutdown: accepts what waits in each backlog (each gets a
    /// child that starts stopping), closing a listener once its backlog is
    /// empty.
    fn drain_backlogs(&mut self) {
        let mut i = 0;
        while i < self.listeners.len() {
            let mut empty = false;
            while self.room().is_ok() && !empty {
                match listener::accept(&self.listeners[i]) {
                    Ok((conn, peer)) => self.admit(conn, peer),
                    Err(Errno::EINTR | Errno::ECONNABORTED) => {}
                    Err(_) => empty = true,
                }
            }
            if empty {
                self.listeners.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn kill_remaining(&mut self) -> usize {
        let n = self.hot.children.len();
        // Asked for with --shutdown-timeout 0: not an error then.
        let level = match self.settings.shutdown_timeout.is_zero() {
            true => Level::Info,
            false => Level::Error,
        };
        crate::log!(
            level,
            "{n} children still running after {}s, sending SIGKILL",
            self.settings.shutdown_timeout.as_secs()
        );
        let hot = &mut *self.hot;
        hot.children.kill_all(&mut hot.stats)
    }
}
