//! The one error type of forkecho.
//!
//! Every failure the server reports is a bad command line (`Usage`), a start-up
//! refused for a reason that is not one failed call (`Start`), or a failed
//! system call with the address it concerned (`Sys`). Each renders as a single
//! line, which `main` prints and turns into a non-zero exit: no panic, no
//! backtrace.

use core::fmt;
use nix::errno::Errno;
use std::net::SocketAddr;

#[derive(Debug)]
pub enum Error {
    /// The command line is wrong; the text says what and how to fix it.
    Usage(String),
    /// Start-up refused for a reason that is not one failed call: a bad
    /// environment (`LISTEN_FDS`), an unusable inherited descriptor, a
    /// privilege drop that did not hold. The text says what.
    Start(String),
    /// A system call failed at start-up or in the loop.
    Sys {
        /// What was being done, e.g. "cannot bind".
        op: &'static str,
        /// The address it was done for, when there is one. Boxed: every
        /// `Result` of start-up carries an `Error`, and a `SocketAddr` in
        /// line would triple its size and every copy on the way up.
        addr: Option<Box<SocketAddr>>,
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
            addr: Some(Box::new(addr)),
            errno,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) | Error::Start(msg) => f.write_str(msg),
            Error::Sys { op, addr, errno } => {
                f.write_str(op)?;
                if let Some(a) = addr {
                    write!(f, " {a}")?;
                }
                write!(f, ": {}", Reason(*errno))
            }
        }
    }
}

pub type Result<T> = core::result::Result<T, Error>;

/// "Permission denied (EACCES)": the C library's text for people, the name for
/// searching. Written without `Debug`, which release builds compile out
/// (`-Zfmt-debug=none`) to save space.
pub struct Reason(pub Errno);

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::sys::strerror(self.0))?;
        match errno_name(self.0) {
            Some(name) => write!(f, " ({name})"),
            None => write!(f, " (errno {})", self.0 as i32),
        }
    }
}

/// Symbolic names of the errors this server can meet; others print as a
/// number. A full table would cost more bytes than it is worth on a board.
/// One string and one array rather than a `match`: the match compiled to a
/// jump table with a string reference per arm, twice the size.
const NAMES: &str = "EPERM ENOENT EINTR EIO EBADF EAGAIN ENOMEM EACCES \
    EFAULT EINVAL ENFILE EMFILE ENOSPC EPIPE ENOSYS ENOTSOCK \
    EPROTO EPROTONOSUPPORT EOPNOTSUPP EAFNOSUPPORT EADDRINUSE EADDRNOTAVAIL \
    ENETDOWN ENETUNREACH ECONNABORTED ECONNRESET ENOBUFS ENOTCONN \
    ETIMEDOUT ECONNREFUSED EHOSTUNREACH";

/// The errors of [`NAMES`], in its order.
const NAMED: [Errno; 31] = {
    use Errno::*;
    [
        EPERM,
        ENOENT,
        EINTR,
        EIO,
        EBADF,
        EAGAIN,
        ENOMEM,
        EACCES,
        EFAULT,
        EINVAL,
        ENFILE,
        EMFILE,
        ENOSPC,
        EPIPE,
        ENOSYS,
        ENOTSOCK,
        EPROTO,
        EPROTONOSUPPORT,
        EOPNOTSUPP,
        EAFNOSUPPORT,
        EADDRINUSE,
        EADDRNOTAVAIL,
        ENETDOWN,
        ENETUNREACH,
        ECONNABORTED,
        ECONNRESET,
        ENOBUFS,
        ENOTCONN,
        ETIMEDOUT,
        ECONNREFUSED,
        EHOSTUNREACH,
    ]
};

fn errno_name(e: Errno) -> Option<&'static str> {
    let i = NAMED.iter().position(|&n| n == e)?;
    NAMES.split(' ').nth(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_their_errors() {
        assert_eq!(NAMES.split(' ').count(), NAMED.len());
        for e in NAMED {
            assert_eq!(errno_name(e), Some(format!("{e:?}").as_str()));
        }
    }

    #[test]
    fn unlisted_errno_prints_its_number() {
        let text = Reason(Errno::EXDEV).to_string();
        assert!(
            text.ends_with(&format!(" (errno {})", Errno::EXDEV as i32)),
            "{text}"
        );
        assert!(text.len() > 12, "{text}");
    }

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
