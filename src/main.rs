//! forkecho: a small, static, fork-per-connection TCP echo server (RFC 862)
//! for embedded Linux boards.
//!
//! The parent binds, polls and forks; each child echoes one connection and
//! exits. Fork per connection buys isolation (a misbehaving session cannot
//! corrupt another) and a trivially correct session loop; the cost is paid in
//! discipline, which this crate keeps: every descriptor closed on the right
//! side of the fork, every child reaped promptly, no heap after start-up.
//!
//! # Data flow
//! ```text
//! argv ─ cli ─▶ Config ─ main ─▶ listeners (listener | activation) ─┐
//!                                                                  ▼
//!   signals ─── flags ───▶ supervisor: ppoll ─ accept ─ admission::Gate
//!                             ▲                          │ admitted
//!                             │ waitpid                  ▼
//!                          children ◀─ exit status ─ fork ─▶ session (child)
//! ```
//!
//! # Layout
//! Start-up:
//! - [`cli`]: command line (a small hand-written scan) into a `Config`, one
//!   small step per concern; a leaf that builds the domain's types from text.
//! - [`limits`]: every capacity, range and default, quoted by `cli`'s
//!   messages and sizing every fixed table.
//! - [`listener`]: what to listen on (`ListenSpec`, the v6-only pairing),
//!   listening sockets and their options, `accept` with the peer.
//! - [`activation`]: socket activation (`LISTEN_FDS`), `--inetd`, readiness
//!   (`NOTIFY_SOCKET`, `--ready-fd`).
//! - [`privs`]: `--user`/`--group`/`--chroot` and `PR_SET_NO_NEW_PRIVS`.
//!
//! The parent's loop:
//! - [`supervisor`]: the `ppoll` loop that sequences the rest — accept,
//!   admit, fork, reap, shut down.
//! - [`admission`]: access rules, rate limits, per-source limits as one
//!   verdict (`Gate::check`), decided between accept and fork.
//! - [`children`]: the child table with each child's source, the reaper,
//!   kill-all.
//! - [`backoff`]: what an `accept` or `fork` failure leads to (retry, the
//!   reserve descriptor, a pause), never a busy loop.
//! - [`signals`]: handlers setting flags; the mask `ppoll` waits with.
//! - [`stats`]: the parent's counters and the SIGUSR1 status line.
//! - [`metrics`]: the counters as a Prometheus text file (`--metrics-file`),
//!   replaced atomically on a timer, on SIGUSR1, at start and at shutdown.
//! - [`udp`]: the UDP echo (`--udp`), served in the loop without a fork:
//!   the guards against reflection and loops, the reply from the address
//!   the datagram was sent to.
//!
//! The child:
//! - [`session`]: the descriptor cleanup after fork, the echo loop with its
//!   limits, and the exit-status protocol (`End::status`/`End::from_status`).
//! - [`sandbox`]: `--sandbox`, the seccomp filter a child installs before
//!   touching its connection, and the start-up probe.
//!
//! Everywhere:
//! - [`log`]: one-write log lines formatted in fixed storage, the rate limit
//!   for recurring lines, peer formatting.
//! - [`error`]: the one start-up error type, printed as one line.
//! - [`sys`]: the only `unsafe` — thin wrappers over raw calls, each with
//!   why it is sound.
//! - `alloc_count` (feature `alloc-count`, tests only): the allocation
//!   counter that proves the child and the loop never allocate.

#![deny(unsafe_code)]
// No std runtime: `sys::main` is the C entry point and `run` does the part
// of the runtime's start-up that forkecho relies on (3 KB on armv7).
#![cfg_attr(not(test), no_main)]

mod activation;
mod admission;
mod backoff;
mod children;
mod cli;
mod error;
mod limits;
mod listener;
mod log;
mod metrics;
mod privs;
mod sandbox;
mod session;
mod shared;
mod signals;
mod stats;
mod supervisor;
mod sys;
mod udp;

#[cfg(feature = "alloc-count")]
mod alloc_count;
#[cfg(feature = "alloc-count")]
#[global_allocator]
static ALLOC: sys::CountingAlloc = sys::CountingAlloc;
#[cfg(not(feature = "alloc-count"))]
#[global_allocator]
static ALLOC: sys::Arena = sys::Arena;

use crate::error::{Error, Result};
use crate::log::Level;
use std::time::{Duration, Instant};

/// The program, entered from `sys::main` with the arguments after the
/// program name; returns the exit status.
#[cfg_attr(test, allow(dead_code))]
fn run(args: &[&[u8]]) -> u8 {
    // What std's runtime did before `main`: closed descriptors 0-2 onto
    // /dev/null (see `fill_std_fds`), and SIGPIPE ignored, so that --help
    // into a closed pipe is EPIPE, a quiet exit, not death by signal.
    fill_std_fds();
    let _ = sys::set_disposition(nix::sys::signal::Signal::SIGPIPE, true);
    match start(args) {
        Ok(Some(sup)) => {
            sup.run();
            0
        }
        Ok(None) => 0,
        Err(e) => {
            // Usage errors: 2 (as most Unix tools); everything else: 1.
            let code = if matches!(e, Error::Usage(_)) { 2 } else { 1 };
            crate::log::set_level(Level::Error);
            log!(Level::Error, "{e}");
            code
        }
    }
}

/// Everything up to serving; returns the loop, or `None` when there is
/// nothing to serve (`--help`, `--version`).
///
/// Never inlined, and the loop runs from `run`, not from here: this frame
/// holds every start-up value (the gate, the child table, the listeners,
/// 40 KiB and more before they move into place), and were the loop called
/// from it, those stack pages would stay populated under the loop, and every
/// `fork` would copy their page-table entries.
#[inline(never)]
fn start(words: &[&[u8]]) -> Result<Option<supervisor::Supervisor>> {
    // The argument is named by its place: printing it lossily would cost
    // 0.5 KB of UTF-8 repair code on armv7 for a line nobody sees twice.
    let mut args = Vec::with_capacity(words.len());
    for (n, a) in words.iter().enumerate() {
        let a = core::str::from_utf8(a)
            .map_err(|_| Error::Usage(format!("argument {} is not UTF-8", n + 1)))?;
        args.push(a);
    }
    let cfg = match cli::parse(&args)? {
        cli::Command::Print(text) => return print(&text).map(|()| None),
        cli::Command::Run(cfg) => cfg,
    };
    log::set_level(cfg.level);
    // Descriptors handed over at exec are taken before this process opens
    // any of its own (but /dev/null onto a closed 0-2, which `run` does
    // first, as std's runtime did), so none of ours can be mistaken for one
    // of them, nor they for each other.
    let passed = match cfg.inetd {
        false => activation::listen_fds()?,
        true => None,
    };
    let ready_fd = match cfg.ready_fd {
        Some(fd) if passed.iter().any(|p| p.owns(fd)) => {
            return Err(Error::Usage(format!(
                "--ready-fd {fd}: is a socket passed by LISTEN_FDS"
            )));
        }
        fd => fd.map(activation::take_ready_fd).transpose()?,
    };
    log::init_stderr();
    if let Some(path) = &cfg.syslog {
        log::open_syslog(path).map_err(|e| {
            Error::Start(format!(
                "--syslog: cannot connect to {path}: {}",
                error::Reason(e)
            ))
        })?;
    }
    // Names are looked up now, while /etc/passwd is still in reach.
    let target = privs::resolve(
        cfg.user.as_deref(),
        cfg.group.as_deref(),
        cfg.chroot.as_deref(),
    )?;
    if cfg.inetd {
        target.apply()?;
        privs::no_new_privs()?;
        let end = activation::serve_inetd(activation::Inetd {
            policy: &cfg.policy,
            buffer_size: cfg.buffer_size,
            mode: cfg.echo_mode,
            limits: cfg.limits,
            sandbox: cfg.sandbox,
            udp_buffer: cfg.udp_buffer,
            udp_refuse_ports: cfg.udp_refuse_ports.clone(),
        })?;
        sys::exit(end.inetd_status());
    }
    let (listeners, udp) = match passed {
        Some(_) if !cfg.listen.is_empty() || !cfg.udp.is_empty() => {
            return Err(Error::Usage(
                "--listen/--udp and socket activation (LISTEN_FDS) exclude each other".into(),
            ));
        }
        Some(passed) => (passed.tcp, passed.udp),
        None => (bind(&cfg)?, bind_udp(&cfg)?),
    };
    let udp = udp::Udp::new(udp, cfg.udp_buffer, cfg.udp_refuse_ports.clone());
    // Handlers go in after binding, so a bind failure exits with the default
    // dispositions untouched, and before the "listening" line, so a script
    // that reacts to that line can already signal us.
    let signals = signals::Signals::install()?;
    let readiness = activation::Readiness::new(activation::Notify::from_env(), ready_fd);
    let gate = admission::Gate::new(cfg.policy.clone(), &cfg.reject_message, Instant::now());
    let setup = session::Setup {
        buf: sys::zeroed_pages(cfg.buffer_size),
        mode: cfg.echo_mode,
        limits: cfg.limits,
    };
    let settings = supervisor::Settings {
        max_children: cfg.max_children,
        evict_after: cfg.evict_after,
        shutdown_timeout: Duration::from_secs(cfg.shutdown_timeout_secs.into()),
    };
    if let Err(e) = shared::map() {
        log!(
            Level::Error,
            "cannot map the shared page, idle sessions will not be evicted: {}",
            error::Reason(e)
        );
    }
    // The directory is opened before the chroot: the path keeps its meaning.
    let metrics = match cfg.metrics {
        Some(spec) => metrics::Metrics::open(spec, Instant::now()),
        None => metrics::Metrics::off(),
    };
    let mut sup = supervisor::Supervisor::new(
        listeners, signals, readiness, gate, setup, settings, metrics,
    )
    .with_udp(udp);
    // Bound, reserve descriptor open: now give up root, for good.
    target.apply()?;
    privs::no_new_privs()?;
    // Probed as the children run (after the drop), and after every other
    // start-up check, so a failed start is still one line.
    sup.sandbox(sandbox::Sandbox::prepare(cfg.sandbox)?);
    sup.announce();
    Ok(Some(sup))
}

/// `--help`/`--version` output on stdout. A full disk or a closed pipe is an
/// error line (or, for a reader that went away, a quiet exit), never a panic
/// as `print!` would give.
fn print(text: &str) -> Result<()> {
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        match sys::write_raw(1, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EPIPE) => sys::exit(1),
            Err(e) => return Err(Error::sys("cannot write to standard output", e)),
        }
    }
    Ok(())
}

fn bind(cfg: &cli::Config) -> Result<listener::Listeners> {
    let mut listeners = listener::Listeners::new();
    if cfg.listen.is_empty() {
        let _ = listeners.push(listener::open_default(cfg.backlog)?);
    } else {
        for spec in &cfg.listen {
            let _ = listeners.push(listener::open(*spec, cfg.backlog)?);
        }
    }
    Ok(listeners)
}

fn bind_udp(cfg: &cli::Config) -> Result<udp::Sockets> {
    let mut socks = udp::Sockets::new();
    for spec in &cfg.udp {
        let _ = socks.push(udp::open(*spec)?);
    }
    Ok(socks)
}

/// Opens /dev/null onto any of descriptors 0-2 that is closed, as daemons
/// do: otherwise the first socket would get number 0-2, a log line would go
/// into it, and a child's descriptor cleanup would treat it as stdio.
fn fill_std_fds() {
    for fd in 0..3 {
        if sys::fd_check(fd).is_err() {
            // open(2) returns the lowest free number: this one.
            let _ = nix::fcntl::open(
                "/dev/null",
                nix::fcntl::OFlag::O_RDWR,
                nix::sys::stat::Mode::empty(),
            )
            .map(std::os::fd::IntoRawFd::into_raw_fd);
        }
    }
}
