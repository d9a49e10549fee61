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
//! - [`supervisor`]: the parent's poll loop — accept, fork, reap, shut down.
//! - [`admission`]: access rules, rate limits and per-address limits,
//!   decided between accept and fork.
//! - [`session`]: the child's echo loop and its `_exit`.
//! - [`signals`]: handlers feeding the self-pipe; the mask `ppoll` waits with.
//! - [`stats`]: the parent's counters and the SIGUSR1 status line.
//! - [`log`]: one-write log lines formatted in fixed storage.
//! - [`error`]: the one error type, printed as one line.

mod admission;
mod cli;
mod error;
mod listener;
mod log;
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

    let mut listeners = heapless::Vec::new();
    if cfg.listen.is_empty() {
        let _ = listeners.push(listener::open_default(cfg.backlog)?);
    } else {
        for spec in &cfg.listen {
            let _ = listeners.push(listener::open(*spec, cfg.backlog)?);
        }
    }
    // Handlers go in after binding, so a bind failure exits with the default
    // dispositions untouched, and before the "listening" line, so a script
    // that reacts to that line can already signal us.
    let pipe = signals::SelfPipe::install()?;
    let sup = supervisor::Supervisor::new(&cfg, listeners, pipe);
    sup.announce();
    sup.run();
    Ok(())
}
