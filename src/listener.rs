//! Listening sockets: creation, options, bind, and `accept4(2)` with the
//! peer's address.
//!
//! All listeners are non-blocking (the accept loop only accepts what `poll`
//! reported ready, and must never block on a connection that the peer reset
//! in between) and close-on-exec (nothing this process might exec inherits
//! them).

use crate::cli::{ListenSpec, DEFAULT_PORT};
use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, SockFlag, SockType, SockaddrLike, SockaddrStorage,
};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// One bound, listening socket and the address it really got (port 0
/// resolved), which is what the "listening on" line reports.
pub struct Listener {
    pub fd: OwnedFd,
    pub local: SocketAddr,
}

/// Opens one listener: `socket(2)` with `SOCK_CLOEXEC | SOCK_NONBLOCK`,
/// `SO_REUSEADDR` (so a restart binds at once although old connections sit in
/// TIME_WAIT), `IPV6_V6ONLY` as the spec says, `bind(2)`, `listen(2)`.
pub fn open(spec: ListenSpec, backlog: i32) -> Result<Listener> {
    let addr = spec.addr;
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = socket::socket(family, SockType::Stream, flags, None)
        .map_err(|e| Error::at("cannot create a socket for", addr, e))?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)
        .map_err(|e| Error::at("cannot set SO_REUSEADDR on", addr, e))?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &spec.v6only)
            .map_err(|e| Error::at("cannot set IPV6_V6ONLY on", addr, e))?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(|e| Error::at("cannot bind", addr, e))?;
    listen(&fd, backlog).map_err(|e| Error::at("cannot listen on", addr, e))?;
    let local = local_addr(&fd).map_err(|e| Error::at("cannot read the address of", addr, e))?;
    Ok(Listener { fd, local })
}

/// The default when no `--listen` is given: `[::]:7007` accepting IPv4 too;
/// on a kernel without IPv6 (`EAFNOSUPPORT`, or `EADDRNOTAVAIL` when IPv6 is
/// disabled by sysctl) `0.0.0.0:7007`.
pub fn open_default(backlog: i32) -> Result<Listener> {
    let v6 = ListenSpec {
        addr: SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, DEFAULT_PORT, 0, 0)),
        v6only: false,
    };
    match open(v6, backlog) {
        Err(Error::Sys {
            errno: Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL,
            ..
        }) => {
            let v4 = ListenSpec {
                addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)),
                v6only: false,
            };
            open(v4, backlog)
        }
        other => other,
    }
}

/// `listen(2)` called directly: nix's `Backlog::new` refuses values above
/// the C library's `SOMAXCONN` constant, which musl fixes at 128, although the
/// kernel takes any value and caps it at `net.core.somaxconn` itself.
fn listen(fd: &OwnedFd, backlog: i32) -> nix::Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    Errno::result(unsafe { nix::libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// `getsockname(2)`: the address the kernel actually bound.
pub fn local_addr(fd: &OwnedFd) -> nix::Result<SocketAddr> {
    let ss: SockaddrStorage = socket::getsockname(fd.as_raw_fd())?;
    to_std(&ss).ok_or(Errno::EAFNOSUPPORT)
}

pub fn to_std(ss: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = ss.as_sockaddr_in() {
        Some(SocketAddr::V4(SocketAddrV4::from(*v4)))
    } else {
        ss.as_sockaddr_in6()
            .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
    }
}

/// `accept4(2)` with `SOCK_CLOEXEC | SOCK_NONBLOCK`, returning the peer's
/// address as well.
///
/// nix's `accept4` discards the address, and asking for it later would cost a
/// `getpeername(2)` per connection; the kernel hands it over here for free.
/// Non-blocking because the session waits in `poll` with its timeouts; the
/// flag here saves the child an `fcntl(2)`.
pub fn accept(listener: &Listener) -> nix::Result<(OwnedFd, Option<SocketAddr>)> {
    // SAFETY: zeroed sockaddr_storage is a valid "empty" address; the kernel
    // writes at most `len` bytes into it.
    let mut storage: nix::libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut len = core::mem::size_of::<nix::libc::sockaddr_storage>() as nix::libc::socklen_t;
    // SAFETY: the pointers refer to live locals of the right types and sizes.
    let fd = unsafe {
        nix::libc::accept4(
            listener.fd.as_fd().as_raw_fd(),
            (&mut storage as *mut nix::libc::sockaddr_storage).cast(),
            &mut len,
            nix::libc::SOCK_CLOEXEC | nix::libc::SOCK_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
    let conn = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the kernel filled `len` bytes of a sockaddr_storage.
    let peer = unsafe {
        SockaddrStorage::from_raw(
            (&storage as *const nix::libc::sockaddr_storage).cast(),
            Some(len),
        )
    }
    .and_then(|ss| to_std(&ss));
    Ok((conn, peer))
}
