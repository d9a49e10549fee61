//! Listening sockets: creation, options, bind, and `accept4(2)` with the
//! peer's address.
//!
//! All listeners are non-blocking (the accept loop only accepts what `poll`
//! reported ready, and must never block on a connection that the peer reset
//! in between) and close-on-exec (nothing this process might exec inherits
//! them).

use crate::error::{Error, Result};
use crate::limits::{DEFAULT_PORT, MAX_LISTENERS};
use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// What to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenSpec {
    pub addr: SocketAddr,
    /// `IPV6_V6ONLY` for an IPv6 socket: off for the dual-stack default and
    /// for a lone `[::]:P`; on when an IPv4 address shares the port, so both
    /// can bind.
    pub v6only: bool,
}

/// The bound listeners, in order.
pub type Listeners = heapless::Vec<Listener, MAX_LISTENERS>;

/// The `--listen` addresses, in order.
pub type Specs = heapless::Vec<ListenSpec, MAX_LISTENERS>;

/// Sets `v6only` on every spec: an IPv6 wildcard shares its port with IPv4
/// unless told not to, so when an IPv4 address is also given on that port,
/// the IPv6 socket is made v6-only and both binds succeed.
pub fn pair_v6only(specs: &mut Specs) {
    let v4_ports: heapless::Vec<u16, MAX_LISTENERS> = specs
        .iter()
        .filter(|l| l.addr.is_ipv4())
        .map(|l| l.addr.port())
        .collect();
    for l in specs.iter_mut() {
        l.v6only = l.addr.is_ipv6() && l.addr.port() != 0 && v4_ports.contains(&l.addr.port());
    }
}

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
    urgent_inline(&fd).map_err(|e| Error::at("cannot set SO_OOBINLINE on", addr, e))?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &spec.v6only)
            .map_err(|e| Error::at("cannot set IPV6_V6ONLY on", addr, e))?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(|e| Error::at("cannot bind", addr, e))?;
    crate::sys::listen(fd.as_fd(), backlog).map_err(|e| Error::at("cannot listen on", addr, e))?;
    let local = local_addr(&fd).map_err(|e| Error::at("cannot read the address of", addr, e))?;
    Ok(Listener { fd, local })
}

/// `SO_OOBINLINE`: urgent (`MSG_OOB`) bytes stay in the stream, where the
/// echo sends them back in order; without it `read` skips them. Accepted
/// sockets inherit it from the listener, so it costs no call per connection.
pub fn urgent_inline(fd: &impl AsFd) -> nix::Result<()> {
    socket::setsockopt(fd, sockopt::OobInline, &true)
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

/// `accept4(2)` with `SOCK_CLOEXEC | SOCK_NONBLOCK`, with the peer's
/// address (see `sys::accept4`). Non-blocking because the session waits in
/// `poll` with its timeouts; the flag here saves the child an `fcntl(2)`.
pub fn accept(listener: &Listener) -> nix::Result<(OwnedFd, Option<SocketAddr>)> {
    let (conn, peer) = crate::sys::accept4(listener.fd.as_fd())?;
    Ok((conn, peer.and_then(|ss| to_std(&ss))))
}
