//! Shared test helpers, in four parts:
//! - `server`: start the real `forkecho` binary (directly, or through a QEMU
//!   user-mode runner for cross builds) on loopback port 0, run it to the end,
//!   check its one-line errors;
//! - `io`: talk to it with deadlines, and make and check payloads;
//! - `procfs`: inspect its process tree and descriptors through /proc;
//! - `udp`: talk to its UDP echo.
//!
//! The binary is `FORKECHO_BIN` when set (e.g. the release ARM build), else
//! the one cargo built for this test. The runner is `FORKECHO_RUNNER` when
//! set (may be empty for native, e.g. on a Pi), else the QEMU command for the
//! target the test itself was built for (it then runs under that emulator too).

#![allow(dead_code, unused_imports)]

mod io;
mod procfs;
mod server;
mod udp;

pub use io::*;
pub use procfs::*;
pub use server::*;
pub use udp::*;
