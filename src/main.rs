//! forkecho: a small, static, fork-per-connection TCP echo server (RFC 862)
//! for embedded Linux boards.
//!
//! The parent binds, polls and forks; each child echoes one connection and
//! exits. Fork per connection buys isolation (a misbehaving session cannot
//! corrupt another) and a trivially correct session loop; the cost is paid in
//! discipline, which this crate keeps: every descriptor closed on the right
//! side of the fork, every child reaped promptly, no heap after start-up.
//!
//! # Layout
//! - [`cli`]: command line (argh) and its validation into a `Config`.
//! - [`listener`]: listening sockets, their options, `accept4` with the peer.
//! - [`activation`]: socket activation (`LISTEN_FDS`), `--inetd`, readiness
//!   (`NOTIFY_SOCKET`, `--ready-fd`).
//! - [`privs`]: `--user`/`--group`/`--chroot` and `PR_SET_NO_NEW_PRIVS`.
//! - [`supervisor`]: the parent's poll loop — accept, fork, reap, shut down.
//! - [`admission`]: access rules, rate limits and per-address limits,
//!   decided between accept and fork.
//! - [`session`]: the child's echo loop and its `_exit`.
//! - [`signals`]: handlers feeding the self-pipe; the mask `ppoll` waits with.
//! - [`stats`]: the parent's counters and the SIGUSR1 status line.
//! - [`log`]: one-write log lines formatted in fixed storage.
//! - [`error`]: the one error type, printed as one line.

mod activation;
mod admission;
mod cli;
mod error;
mod listener;
mod log;
mod privs;
mod session;
mod signals;
mod stats;
mod supervisor;

#[cfg(feature = "alloc-count")]
mod alloc_count;
#[cfg(feature = "alloc-count")]
#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

use crate::error::{Error, Result};
use crate::log::Level;
use std::process::ExitCode;

fn main() -> ExitCode {
    match start() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Usage errors: 2 (as most Unix tools); everything else: 1.
            let code = if matches!(e, Error::Usage(_)) { 2 } else { 1 };
            crate::log::set_level(Level::Error);
            log!(Level::Error, "{e}");
            ExitCode::from(code)
        }
    }
}

fn start() -> Result<()> {
    fill_std_fds();
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| {
            a.into_string()
                .map_err(|a| Error::Usage(format!("argument {} is not UTF-8", a.to_string_lossy())))
        })
        .collect::<Result<_>>()?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cfg = match cli::parse(&args)? {
        cli::Command::Print(text) => {
            print!("{text}");
            return Ok(());
        }
        cli::Command::Run(cfg) => cfg,
    };
    log::set_level(cfg.level);
    if let Some(path) = &cfg.syslog {
        log::open_syslog(path).map_err(|e| {
            Error::Start(format!(
                "--syslog: cannot connect to {path}: {}",
                error::Reason(e)
            ))
        })?;
        log::stderr_off();
    }
    if let Some(fd) = cfg.ready_fd {
        activation::check_ready_fd(fd)?;
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
        let status = activation::serve_inetd(&cfg)?;
        session::exit(status);
    }

    let listeners = match activation::listen_fds()? {
        Some(passed) if !cfg.listen.is_empty() => {
            drop(passed);
            return Err(Error::Usage(
                "--listen and socket activation (LISTEN_FDS) exclude each other".into(),
            ));
        }
        Some(passed) => passed,
        None => bind(&cfg)?,
    };
    // Handlers go in after binding, so a bind failure exits with the default
    // dispositions untouched, and before the "listening" line, so a script
    // that reacts to that line can already signal us.
    let pipe = signals::SelfPipe::install()?;
    let notify = activation::Notify::from_env();
    let mut sup = supervisor::Supervisor::new(&cfg, listeners, pipe, notify);
    // Bound, reserve descriptor open: now give up root, for good.
    target.apply()?;
    privs::no_new_privs()?;
    sup.announce();
    sup.run();
    Ok(())
}

fn bind(cfg: &cli::Config) -> Result<heapless::Vec<listener::Listener, { cli::MAX_LISTENERS }>> {
    let mut listeners = heapless::Vec::new();
    if cfg.listen.is_empty() {
        let _ = listeners.push(listener::open_default(cfg.backlog)?);
    } else {
        for spec in &cfg.listen {
            let _ = listeners.push(listener::open(*spec, cfg.backlog)?);
        }
    }
    Ok(listeners)
}

/// Opens /dev/null onto any of descriptors 0-2 that is closed, as daemons
/// do: otherwise the first socket would get number 0-2, a log line would go
/// into it, and a child's descriptor cleanup would treat it as stdio.
fn fill_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } < 0 {
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
