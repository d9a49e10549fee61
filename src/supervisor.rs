//! The parent: one `ppoll(2)` loop over the self-pipe and the listeners that
//! accepts, forks, reaps and shuts down.
//!
//! Shape of a turn (after s6-tcpserverd):
//! 1. wait on the self-pipe always, the listeners only while accepting —
//!    below `--max-children` and not paused. At the cap new clients wait in
//!    the kernel backlog instead of being accepted and dropped;
//! 2. drain the pipe if a signal came, then reap *every* exited child
//!    (`waitpid(-1, WNOHANG)` until none is left: SIGCHLDs coalesce, one wait
//!    per signal leaks);
//! 3. accept from the ready listeners and fork one child per connection.
//!
//! Nothing here allocates after start-up: the child table is a fixed
//! `heapless::Vec`, the poll set lives on the stack, log lines are formatted
//! into fixed storage.

use crate::admission::{self, PerIp, Policy, Rates, Refusal};
use crate::cli::{Config, MAX_CHILDREN, MAX_LISTENERS};
use crate::error::Reason;
use crate::listener::{self, Listener};
use crate::log::Level;
use crate::session::{self, PeerDisplay};
use crate::signals::{self, SelfPipe};
use crate::stats::{Stats, Status};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Most connections accepted from one listener per turn, so one busy listener
/// cannot starve the others or delay reaping.
const ACCEPT_BATCH: usize = 16;
/// Pause of the listeners after a resource error (fork failure, ENOBUFS,
/// ENOMEM): long enough to stop a busy loop, short enough to go unnoticed.
const SHORT_PAUSE: Duration = Duration::from_millis(200);
/// Pause when out of descriptors and the reserve could not be used.
const LONG_PAUSE: Duration = Duration::from_secs(1);
/// At most one line per kind of recurring error in this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Rate limit for a recurring error line: the first line goes out, then at
/// most one per [`LOG_INTERVAL`], saying how many were held back.
#[derive(Default)]
struct LogLimit {
    last: Option<Instant>,
    suppressed: u32,
}

impl LogLimit {
    /// `Some(n)` when a line may go out now (`n` lines were held back).
    fn allow(&mut self, now: Instant) -> Option<u32> {
        match self.last {
            Some(t) if now.duration_since(t) < LOG_INTERVAL => {
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

pub struct Supervisor {
    max_children: usize,
    shutdown_timeout: Duration,
    listeners: heapless::Vec<Listener, MAX_LISTENERS>,
    pipe: SelfPipe,
    /// Live children: pid and the key of their source address (its
    /// `--max-per-ip` slot is given back when the child is reaped).
    /// Capacity ≥ `max_children`, so a push after the cap check cannot fail.
    children: heapless::Vec<(Pid, u128), MAX_CHILDREN>,
    policy: Policy,
    per_ip: PerIp,
    rates: Rates,
    /// Sent to a client refused by a limit, before closing.
    reject_message: Box<[u8]>,
    /// Whether the last turn found the loop at `--max-children`.
    at_cap: bool,
    refuse_log: LogLimit,
    /// The echo buffer, allocated once here and inherited by every child.
    buf: Box<[u8]>,
    mode: session::Mode,
    limits: session::Limits,
    /// A descriptor kept only to be given up when `accept` fails with
    /// EMFILE/ENFILE: closing it makes room to accept the pending connection
    /// and close it, so the queue drains instead of spinning the loop.
    reserve: Option<OwnedFd>,
    paused_until: Option<Instant>,
    shutting_down: bool,
    /// systemd's notification socket, for READY=1 and STOPPING=1.
    notify: Option<crate::activation::Notify>,
    /// `--ready-fd`, written and closed once announced.
    ready_fd: Option<i32>,
    accept_log: LogLimit,
    fork_log: LogLimit,
    stats: Stats,
    #[cfg(feature = "alloc-count")]
    alloc_in_child: bool,
}

impl Supervisor {
    /// Takes the bound listeners and the installed self-pipe; allocates the
    /// echo buffer and opens the reserve descriptor. The last allocations the
    /// parent makes happen here.
    pub fn new(
        cfg: &Config,
        listeners: heapless::Vec<Listener, MAX_LISTENERS>,
        pipe: SelfPipe,
        notify: Option<crate::activation::Notify>,
    ) -> Self {
        Supervisor {
            max_children: cfg.max_children,
            shutdown_timeout: Duration::from_secs(cfg.shutdown_timeout_secs.into()),
            listeners,
            pipe,
            children: heapless::Vec::new(),
            policy: cfg.policy.clone(),
            per_ip: PerIp::default(),
            rates: Rates::new(Instant::now()),
            reject_message: cfg.reject_message.clone().into_boxed_slice(),
            at_cap: false,
            refuse_log: LogLimit::default(),
            buf: vec![0u8; cfg.buffer_size].into_boxed_slice(),
            mode: cfg.echo_mode,
            limits: cfg.limits,
            reserve: open_reserve(),
            paused_until: None,
            shutting_down: false,
            notify,
            ready_fd: cfg.ready_fd,
            accept_log: LogLimit::default(),
            fork_log: LogLimit::default(),
            stats: Stats::default(),
            // Test hook: proves the allocation check can fail.
            #[cfg(feature = "alloc-count")]
            alloc_in_child: std::env::var_os("FORKECHO_TEST_ALLOC_IN_CHILD").is_some(),
        }
    }

    /// One "listening on" line per listener, with the port really bound, so
    /// `--listen 127.0.0.1:0` is usable from scripts and tests; then the
    /// readiness signals: `READY=1` to systemd, the port to `--ready-fd`.
    pub fn announce(&mut self) {
        for l in &self.listeners {
            crate::log!(Level::Info, "listening on {}", l.local);
        }
        if let Some(n) = &self.notify {
            n.send("READY=1");
        }
        if let Some(fd) = self.ready_fd.take() {
            let port = self.listeners.first().map_or(0, |l| l.local.port());
            crate::activation::signal_ready_fd(fd, port);
        }
    }

    /// Serves until SIGTERM or SIGINT, then drains the children.
    pub fn run(mut self) {
        #[cfg(feature = "alloc-count")]
        let base = crate::alloc_count::count();
        loop {
            let (ready, signalled) = self.wait();
            let pending = if signalled {
                self.pipe.drain()
            } else {
                signals::Pending::default()
            };
            self.reap();
            if pending.status {
                self.log_status();
            }
            if pending.terminate {
                break;
            }
            for i in 0..self.listeners.len() {
                if ready & (1 << i) != 0 {
                    self.accept_from(i);
                }
            }
        }
        self.shutdown();
        #[cfg(feature = "alloc-count")]
        crate::log!(
            Level::Error,
            "alloc-check: parent made {} allocations after start-up",
            crate::alloc_count::count() - base
        );
    }

    /// Waits; returns a bit mask of the listeners that are ready, and whether
    /// the self-pipe has something (readable, or a handler ran during the
    /// wait).
    fn wait(&mut self) -> (u32, bool) {
        let now = Instant::now();
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
        }
        let at_cap = self.children.len() >= self.max_children;
        if at_cap && !self.at_cap {
            self.stats.cap_reached += 1;
        }
        self.at_cap = at_cap;
        let accepting = self.paused_until.is_none() && !at_cap;
        let timeout = self.paused_until.map(|t| t.saturating_duration_since(now));
        let mut fds: heapless::Vec<PollFd<'_>, { MAX_LISTENERS + 1 }> = heapless::Vec::new();
        let _ = fds.push(PollFd::new(self.pipe.fd(), PollFlags::POLLIN));
        if accepting {
            for l in &self.listeners {
                let _ = fds.push(PollFd::new(l.fd.as_fd(), PollFlags::POLLIN));
            }
        }
        let mut ready = 0u32;
        let (failed, mut signalled) = match self.pipe.ppoll(&mut fds, timeout) {
            Ok(_) => (None, false),
            Err(Errno::EINTR) => (None, true),
            Err(e) => (Some(e), false),
        };
        signalled |= fds[0].any().unwrap_or(false);
        for (i, fd) in fds.iter().skip(1).enumerate() {
            if fd.any().unwrap_or(false) {
                ready |= 1 << i;
            }
        }
        drop(fds);
        if let Some(e) = failed {
            // Cannot happen with valid descriptors; never spin on it.
            crate::log!(Level::Error, "poll failed: {}", Reason(e));
            self.pause(SHORT_PAUSE);
            return (0, false);
        }
        (ready, signalled)
    }

    /// SIGUSR1: one line with every counter, always written (even with -q:
    /// it was asked for).
    fn log_status(&self) {
        let status = Status {
            active: self.children.len(),
            stats: &self.stats,
        };
        crate::log!(Level::Error, "{status}");
    }

    fn pause(&mut self, d: Duration) {
        self.paused_until = Some(Instant::now() + d);
    }

    /// `waitpid(-1, WNOHANG)` until no exited child is left.
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.forget(pid);
                    match code {
                        session::EXIT_OK => self.stats.exited_ok += 1,
                        session::EXIT_IDLE => self.stats.idle_timeout += 1,
                        session::EXIT_LIFETIME => self.stats.lifetime_end += 1,
                        _ => {
                            self.stats.exited_error += 1;
                            crate::log!(Level::Info, "child {pid} exited with status {code}");
                        }
                    }
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.forget(pid);
                    self.stats.killed += 1;
                    if !(self.shutting_down && sig == Signal::SIGTERM) {
                        crate::log!(Level::Info, "child {pid} killed by {}", sig.as_str());
                    }
                }
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => break, // ECHILD: no children at all.
            }
        }
    }

    fn forget(&mut self, pid: Pid) {
        if let Some(i) = self.children.iter().position(|c| c.0 == pid) {
            let (_, key) = self.children.swap_remove(i);
            // A no-op when --max-per-ip is off: no slot was ever taken.
            self.per_ip.release(key);
        }
    }

    /// The admission checks, in order: access rules, global rate, rate per
    /// source, connections per source. `Some(key)` admits (and holds a
    /// per-address slot if that limit is on); `None` has refused, written
    /// the reject message where it applies and closed the connection.
    fn admit(&mut self, conn: OwnedFd, peer: Option<SocketAddr>) -> Option<(OwnedFd, u128)> {
        let Some(ip) = peer.map(|p| admission::unmap(p.ip())) else {
            return Some((conn, 0));
        };
        let p = &self.policy;
        let key = p.key(ip);
        let verdict = if !p.allows(ip) {
            Err(Refusal::Deny)
        } else if p.rate.is_some() || p.global_rate.is_some() {
            self.rates.admit(p, key, Instant::now())
        } else {
            Ok(())
        };
        let verdict = verdict.and_then(|()| {
            if p.max_per_ip == 0 || self.per_ip.take(key, p.max_per_ip) {
                Ok(())
            } else {
                Err(Refusal::PerIp)
            }
        });
        let why = match verdict {
            Ok(()) => return Some((conn, key)),
            Err(why) => why,
        };
        match why {
            Refusal::Deny => self.stats.refused_deny += 1,
            Refusal::GlobalRate => self.stats.refused_global_rate += 1,
            Refusal::Rate => self.stats.refused_rate += 1,
            Refusal::PerIp => self.stats.refused_per_ip += 1,
        }
        // A denied client learns nothing; one over a limit may be told.
        if why != Refusal::Deny && !self.reject_message.is_empty() {
            // One non-blocking send: a fresh socket's buffer holds the few
            // bytes, and a peer that cannot take them is not waited for.
            let _ = nix::sys::socket::send(
                conn.as_raw_fd(),
                &self.reject_message,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            );
        }
        drop(conn);
        if let Some(held) = self.refuse_log.allow(Instant::now()) {
            crate::log!(
                Level::Info,
                "refused {}: {} ({held} similar messages suppressed)",
                ip,
                why.name()
            );
        }
        None
    }

    fn accept_from(&mut self, i: usize) {
        for _ in 0..ACCEPT_BATCH {
            if self.children.len() >= self.max_children || self.paused_until.is_some() {
                return;
            }
            match listener::accept(&self.listeners[i]) {
                Ok((conn, peer)) => {
                    if let Some((conn, key)) = self.admit(conn, peer) {
                        self.spawn(conn, peer, key);
                    }
                }
                Err(Errno::EAGAIN) => return,
                // The connection died in the queue or a network error was
                // passed on (accept(2), "Error handling"): try the next one.
                Err(
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
                    | Errno::EPERM,
                ) => self.stats.accept_retried += 1,
                Err(e @ (Errno::EMFILE | Errno::ENFILE)) => {
                    self.out_of_descriptors(i, e);
                    return;
                }
                Err(e) => {
                    // ENOBUFS, ENOMEM and anything unexpected: back off.
                    self.stats.accept_paused += 1;
                    self.log_accept_error(e, "pausing");
                    self.pause(SHORT_PAUSE);
                    return;
                }
            }
        }
    }

    /// EMFILE/ENFILE: the pending connection stays queued and poll would
    /// report it again at once — the classic 100% CPU loop. Give up the
    /// reserve descriptor, accept the connection and close it, take the
    /// reserve back. Without a reserve, stop polling the listeners a while.
    fn out_of_descriptors(&mut self, i: usize, e: Errno) {
        if self.reserve.take().is_some() {
            if let Ok((conn, peer)) = listener::accept(&self.listeners[i]) {
                drop(conn);
                self.stats.dropped_no_fd += 1;
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
            self.stats.accept_paused += 1;
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

    /// Forks one child for `conn`. The handled signals are blocked (they
    /// always are outside `ppoll`, see `signals`); the parent closes its copy
    /// of the connection first thing.
    fn spawn(&mut self, conn: OwnedFd, peer: Option<SocketAddr>, key: u128) {
        // SAFETY: the parent is single-threaded, so the child starts with a
        // consistent heap and no lock held by another thread; the child
        // nevertheless only uses memory prepared before fork and the stack.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => self.child(conn, peer),
            Ok(ForkResult::Parent { child }) => {
                drop(conn);
                self.stats.accepted += 1;
                let _ = self.children.push((child, key));
                crate::log!(
                    Level::Debug,
                    "connection from {} served by child {child}",
                    PeerDisplay(peer)
                );
            }
            Err(e) => {
                drop(conn);
                self.per_ip.release(key);
                self.stats.fork_failed += 1;
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
    }

    /// The child, right after fork: close every descriptor it must not hold,
    /// restore default signal handling, echo, `_exit`.
    fn child(&mut self, conn: OwnedFd, peer: Option<SocketAddr>) -> ! {
        #[cfg(feature = "alloc-count")]
        let base = crate::alloc_count::count();
        self.close_all_but(conn.as_raw_fd());
        self.pipe.reset_in_child();

        #[cfg(feature = "alloc-count")]
        if self.alloc_in_child {
            core::hint::black_box(Box::new(0u64));
        }
        let end = session::run(conn.as_fd(), peer, &mut self.buf, self.mode, self.limits);
        #[cfg(feature = "alloc-count")]
        crate::log!(
            Level::Error,
            "alloc-check: child made {} allocations after fork",
            crate::alloc_count::count() - base
        );
        session::exit(end.status())
    }

    /// In the child: close every descriptor but 0-2, the connection and the
    /// syslog socket — the listeners, the self-pipe, the reserve, the
    /// notification socket, and whatever the parent itself inherited without
    /// close-on-exec (a supervisor's pipes, a jobserver), which no session
    /// should pin open. `close_range(2)` closes the gaps between the kept
    /// descriptors; where the kernel lacks it (ENOSYS, before Linux 5.9) the
    /// descriptors the parent knows of are closed one by one.
    ///
    /// Closing by number is sound: the OwnedFds are never dropped in the
    /// child (it leaves with _exit), so nothing closes them twice.
    fn close_all_but(&self, conn: i32) {
        let mut keep = [conn, crate::log::syslog_fd()];
        keep.sort_unstable();
        let mut from = 3u32;
        let mut ok = true;
        for fd in keep {
            if fd >= from as i32 {
                if fd > from as i32 {
                    ok &= close_range(from, fd as u32 - 1).is_ok();
                }
                from = fd as u32 + 1;
            }
        }
        ok &= close_range(from, u32::MAX).is_ok();
        if !ok {
            for l in &self.listeners {
                close_raw(l.fd.as_raw_fd());
            }
            for fd in self.pipe.raw_fds() {
                close_raw(fd);
            }
            if let Some(r) = &self.reserve {
                close_raw(r.as_raw_fd());
            }
            if let Some(n) = &self.notify {
                close_raw(n.raw_fd());
            }
        }
    }

    /// SIGTERM/SIGINT: close the listeners, SIGTERM the children, wait up to
    /// `--shutdown-timeout` for them (still reaping as they go), SIGKILL the
    /// rest and reap them.
    fn shutdown(&mut self) {
        self.shutting_down = true;
        if let Some(n) = &self.notify {
            n.send("STOPPING=1");
        }
        // Closing the listeners makes the kernel refuse new clients at once.
        self.listeners.clear();
        crate::log!(
            Level::Info,
            "shutting down, {} connections open",
            self.children.len()
        );
        for &(pid, _) in &self.children {
            let _ = kill(pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + self.shutdown_timeout;
        loop {
            self.reap();
            if self.children.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                self.kill_remaining();
                break;
            }
            let mut fds = [PollFd::new(self.pipe.fd(), PollFlags::POLLIN)];
            let _ = self.pipe.ppoll(&mut fds, Some(deadline - now));
            self.pipe.drain();
        }
        crate::log!(Level::Info, "stopped");
    }

    fn kill_remaining(&mut self) {
        crate::log!(
            Level::Error,
            "{} children still running after {}s, sending SIGKILL",
            self.children.len(),
            self.shutdown_timeout.as_secs()
        );
        for &(pid, _) in &self.children {
            let _ = kill(pid, Signal::SIGKILL);
        }
        // Blocking waits now: SIGKILL cannot be caught, each child will exit.
        while !self.children.is_empty() {
            match waitpid(None, None) {
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        self.forget(pid);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    self.children.clear();
                }
            }
        }
    }
}

/// `close(2)` on a raw descriptor in the child; errors are irrelevant there.
fn close_raw(fd: i32) {
    // SAFETY: the caller owns `fd` through an OwnedFd that is never dropped
    // in this process (the child ends with _exit).
    unsafe { nix::libc::close(fd) };
}

/// `close_range(2)` (raw syscall: musl has no wrapper) over `first..=last`.
fn close_range(first: u32, last: u32) -> Result<(), Errno> {
    // SAFETY: closes descriptors only; flags 0.
    let r = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, first, last, 0u32) };
    Errno::result(r).map(drop)
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
