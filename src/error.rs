//! The one error type of forkecho.
//!
//! Every failure the server reports is either a bad command line (`Usage`) or
//! a failed system call with the address it concerned (`Sys`). Both render as
//! a single line, which `main` prints and turns into a non-zero exit: no panic,
//! no backtrace.

use core::fmt;
use nix::errno::Errno;
use std::net::SocketAddr;

#[derive(Debug)]
pub enum Error {
    /// The command line is wrong; the text says what and how to fix it.
    Usage(String),
    /// A system call failed at start-up or in the loop.
    Sys {
        /// What was being done, e.g. "cannot bind".
        op: &'static str,
        /// The address it was done for, when there is one.
        addr: Option<SocketAddr>,
        errno: Errno,
    },
}

impl Error {
    pub fn sys(op: &'static str, errno: Errno) -> Self {
        Error::Sys {
            op,
            addr: None,
            errno,
        }
    }

    pub fn at(op: &'static str, addr: SocketAddr, errno: Errno) -> Self {
        Error::Sys {
            op,
            addr: Some(addr),
            errno,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => f.write_str(msg),
            Error::Sys { op, addr, errno } => {
                f.write_str(op)?;
                if let Some(a) = addr {
                    write!(f, " {a}")?;
                }
                // "Address already in use (EADDRINUSE)": the text for people,
                // the name for searching.
                write!(f, ": {} ({:?})", errno.desc(), errno)
            }
        }
    }
}

pub type Result<T> = core::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_error_names_address_and_reason() {
        let e = Error::at(
            "cannot bind",
            "127.0.0.1:80".parse().unwrap(),
            Errno::EACCES,
        );
        assert_eq!(
            e.to_string(),
            "cannot bind 127.0.0.1:80: Permission denied (EACCES)"
        );
    }
}
