//! UDP echo (RFC 862's datagram half), served by the parent itself: a
//! datagram needs no session, so it costs one `recvmsg` and one `sendmsg`,
//! never a fork.
//!
//! A UDP echo answers whoever the source address claims to be, so it is a
//! reflector by nature. Before anything is sent back, a datagram passes the
//! guards, in this order (each refusal counted and logged on its own):
//! 1. too long for the buffer (`MSG_TRUNC`): dropped, never echoed cut;
//! 2. source port 0, or a small service's port (`--udp-refuse-ports`: echo,
//!    chargen and friends answer an echo with another datagram, and two such
//!    services aimed at each other by one spoofed packet loop for ever);
//! 3. a source address no host can have (0.0.0.0/8, multicast, 240.0.0.0/4
//!    including the broadcast address, `::`, ff00::/8, and their IPv4-mapped
//!    forms): a reply would go to many hosts or none;
//! 4. a datagram not sent to us alone (a multicast or broadcast destination):
//!    one spoofed packet would otherwise draw one reply per host (smurf);
//! 5. the access rules and rates (`admission::Gate`), last, so datagrams
//!    dropped above spend no rate budget.
//!
//! The reply leaves from the address the datagram was sent to, taken from
//! `IP_PKTINFO`/`IPV6_PKTINFO`: on a wildcard socket the kernel would
//! otherwise pick a source of its own, and the client would drop the reply.
//!
//! Nothing here allocates after start-up: one receive buffer, prepared
//! before the loop; the control messages both ways live on the stack
//! (`sys::recv_pktinfo`, `sys::send_from`). Work per turn is bounded
//! (`UDP_BATCH` datagrams per socket), so a flood cannot hold up the loop's
//! accepting and reaping.

use crate::admission::{unmap, Gate, Refusal};
use crate::error::{Error, Reason, Result};
use crate::limits::{MAX_REFUSE_PORTS, MAX_UDP, UDP_BATCH, UDP_INETD_LINGER};
use crate::listener::{self, ListenSpec};
use crate::log::{Level, LogLimit};
use crate::stats::UdpStats;
use crate::sys::ReplyFrom;
use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, sockopt, SockaddrStorage};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

/// The source ports never answered.
pub type Ports = heapless::Vec<u16, MAX_REFUSE_PORTS>;

/// One bound UDP socket and its real address (port 0 resolved).
pub struct Socket {
    pub fd: OwnedFd,
    pub local: SocketAddr,
}

pub type Sockets = heapless::Vec<Socket, MAX_UDP>;

/// Why a datagram got no reply; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReply {
    TooLong,
    ServicePort,
    PortZero,
    BadSource,
    NotUnicast,
    Refused(Refusal),
    SendFailed(Errno),
}

impl NoReply {
    /// Which log limit the reason shares (one per counter family).
    fn slot(self) -> usize {
        match self {
            NoReply::TooLong => 0,
            NoReply::ServicePort => 1,
            NoReply::PortZero => 2,
            NoReply::BadSource => 3,
            NoReply::NotUnicast => 4,
            NoReply::Refused(_) => 5,
            NoReply::SendFailed(_) => 6,
        }
    }
}

impl core::fmt::Display for NoReply {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            NoReply::TooLong => "longer than --udp-buffer",
            NoReply::ServicePort => "source port refused (--udp-refuse-ports)",
            NoReply::PortZero => "source port 0",
            NoReply::BadSource => "broadcast, multicast or reserved source address",
            NoReply::NotUnicast => "sent to a broadcast or multicast address",
            NoReply::Refused(r) => r.name(),
            NoReply::SendFailed(e) => return write!(f, "send failed: {}", Reason(*e)),
        })
    }
}

/// `socket(2)` (non-blocking, close-on-exec), `IPV6_V6ONLY` as the spec
/// says, `bind(2)`, then the options every UDP socket gets ([`prepare`]).
pub fn open(spec: ListenSpec) -> Result<Socket> {
    let addr = spec.addr;
    let family = match addr {
        SocketAddr::V4(_) => socket::AddressFamily::Inet,
        SocketAddr::V6(_) => socket::AddressFamily::Inet6,
    };
    let flags = socket::SockFlag::SOCK_CLOEXEC | socket::SockFlag::SOCK_NONBLOCK;
    let fd = socket::socket(family, socket::SockType::Datagram, flags, None)
        .map_err(|e| Error::at("cannot create a UDP socket for", addr, e))?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &spec.v6only)
            .map_err(|e| Error::at("cannot set IPV6_V6ONLY on", addr, e))?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(|e| Error::at("cannot bind UDP", addr, e))?;
    prepare(fd).map_err(|e| Error::at("cannot set up UDP", addr, e))
}

/// Asks for each datagram's destination (pktinfo), ours or passed by
/// systemd. On an IPv6 socket `IP_PKTINFO` too, where the kernel takes it:
/// for IPv4 datagrams of a dual-stack socket it tells a directed broadcast
/// apart (see [`Arrival`]).
pub fn prepare(fd: OwnedFd) -> nix::Result<Socket> {
    let local = listener::local_addr(&fd)?;
    if local.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)?;
        let _ = socket::setsockopt(&fd, sockopt::Ipv4PacketInfo, &true);
    } else {
        socket::setsockopt(&fd, sockopt::Ipv4PacketInfo, &true)?;
    }
    Ok(Socket { fd, local })
}

/// Where a datagram arrived, from its pktinfo.
#[derive(Debug, Clone, Copy, Default)]
struct Arrival {
    /// The header's destination (IPv4-mapped addresses unmapped).
    dst: Option<IpAddr>,
    /// The IPv6 interface, kept for the reply (link-local addresses need it).
    ifindex: u32,
    /// IPv4: the kernel's local address for the reply (`ipi_spec_dst`)
    /// differs from the header's destination (`ipi_addr`). For a datagram
    /// to one of our unicast addresses they are the same; for a broadcast
    /// (including a subnet's, e.g. 192.168.1.255, which no address test can
    /// recognise without the interface table) or multicast they are not.
    broadcast: bool,
}

/// A source no reply should go to: 0.0.0.0/8 ("this network"), 224.0.0.0/4
/// (multicast), 240.0.0.0/4 (reserved, with 255.255.255.255), `::`,
/// ff00::/8; IPv4-mapped ones as IPv4. Loopback is fine.
fn bad_source(ip: IpAddr) -> bool {
    match unmap(ip) {
        IpAddr::V4(v4) => v4.octets()[0] == 0 || v4.octets()[0] >= 224,
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    }
}

/// A destination that is not one unicast address of ours.
fn not_unicast(a: &Arrival) -> bool {
    a.broadcast
        || match a.dst {
            Some(IpAddr::V4(v4)) => v4.is_broadcast() || v4.is_multicast() || v4.is_unspecified(),
            Some(IpAddr::V6(v6)) => v6.is_multicast() || v6.is_unspecified(),
            None => true,
        }
}

/// The guards, in order (see the module's doc); `Ok` when the datagram from
/// `src` may be answered.
fn judge(
    truncated: bool,
    src: Option<SocketAddr>,
    arrival: &Arrival,
    refuse: &Ports,
    gate: &mut Gate,
) -> core::result::Result<SocketAddr, NoReply> {
    if truncated {
        return Err(NoReply::TooLong);
    }
    let src = src.ok_or(NoReply::BadSource)?;
    match src.port() {
        0 => return Err(NoReply::PortZero),
        p if refuse.contains(&p) => return Err(NoReply::ServicePort),
        _ => {}
    }
    if bad_source(src.ip()) {
        return Err(NoReply::BadSource);
    }
    if not_unicast(arrival) {
        return Err(NoReply::NotUnicast);
    }
    match gate.check(Some(src), |_| 0, Instant::now()) {
        Ok(_) => Ok(src),
        Err(why) => Err(NoReply::Refused(why)),
    }
}

/// The reply's source: the datagram's destination, as the control message
/// for this socket's family. IPv4 leaves the interface to routing (0), as a
/// fixed one can fail where the route changed; IPv6 keeps it.
fn reply_from(local: SocketAddr, a: &Arrival) -> Option<ReplyFrom> {
    let dst = a.dst?;
    Some(match (local, dst) {
        (SocketAddr::V4(_), IpAddr::V4(v4)) => ReplyFrom::V4(libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(v4).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        }),
        (SocketAddr::V4(_), IpAddr::V6(_)) => return None,
        (SocketAddr::V6(_), ip) => ReplyFrom::V6(libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    IpAddr::V6(v6) => v6.octets(),
                },
            },
            ipi6_ifindex: if ip.is_ipv4() { 0 } else { a.ifindex },
        }),
    })
}

/// The UDP sockets and what serving them needs, prepared at start-up.
#[derive(Default)]
pub struct Udp {
    socks: Sockets,
    /// One datagram at a time, up to `--udp-buffer` bytes; no page of it
    /// populated until a datagram comes (every populated page of the parent
    /// is copied-on-write work for each fork), and empty without UDP.
    buf: &'static mut [u8],
    refuse: Ports,
    logs: [LogLimit; 7],
    /// Sockets `poll` found readable this turn, one bit each.
    ready: u32,
}

impl Udp {
    pub fn new(socks: Sockets, buffer_size: usize, refuse: Ports) -> Udp {
        let buf = match socks.is_empty() {
            true => &mut [],
            false => crate::sys::zeroed_pages(buffer_size),
        };
        Udp {
            socks,
            buf,
            refuse,
            ..Udp::default()
        }
    }

    pub fn sockets(&self) -> &Sockets {
        &self.socks
    }

    pub fn set_ready(&mut self, mask: u32) {
        // Written only when it changes: a store on every turn of the loop
        // would copy this page after every fork (see `sys::ParentBox`).
        if self.ready != mask {
            self.ready = mask;
        }
    }

    /// Answers up to `UDP_BATCH` datagrams on each socket `poll` reported.
    pub fn serve(&mut self, gate: &mut Gate, stats: &mut UdpStats) {
        if self.ready == 0 {
            return; // and no store (see `set_ready`)
        }
        for i in 0..self.socks.len() {
            if self.ready & (1 << i) != 0 {
                for _ in 0..UDP_BATCH {
                    if !self.serve_one(i, gate, stats) {
                        break;
                    }
                }
            }
        }
        self.ready = 0;
    }

    /// One datagram: receive, judge, echo. False when the socket is empty
    /// (or failed: `poll` will say when to try again).
    fn serve_one(&mut self, i: usize, gate: &mut Gate, stats: &mut UdpStats) -> bool {
        let sock = &self.socks[i];
        let d = match crate::sys::recv_pktinfo(sock.fd.as_fd(), self.buf) {
            Ok(d) => d,
            Err(Errno::EAGAIN) => return false,
            Err(Errno::EINTR) => return true,
            Err(e) => {
                // Not the sender's fault (ENOMEM and the like): counted as a
                // failure, retried when poll says so.
                self.no_reply(None, NoReply::SendFailed(e), stats);
                return false;
            }
        };
        let src = d.src.as_ref().and_then(listener::to_std);
        let arrival = arrival(&d, sock.local);
        let verdict = judge(d.truncated, src, &arrival, &self.refuse, gate).and_then(|src| {
            let from = reply_from(sock.local, &arrival).ok_or(NoReply::NotUnicast)?;
            let to = SockaddrStorage::from(src);
            crate::sys::send_from(sock.fd.as_fd(), &self.buf[..d.len], &to, &from)
                .map_err(NoReply::SendFailed)
        });
        match verdict {
            Ok(_) => {
                stats.echoed += 1;
                stats.bytes += d.len as u64;
            }
            Err(why) => self.no_reply(src, why, stats),
        }
        true
    }

    /// Counts a datagram left unanswered and logs it, at most one line per
    /// reason per interval.
    fn no_reply(&mut self, src: Option<SocketAddr>, why: NoReply, stats: &mut UdpStats) {
        stats.no_reply(why);
        if let Some(held) = self.logs[why.slot()].allow(Instant::now()) {
            crate::log!(
                Level::Info,
                "udp: no reply to {}: {why} ({held} similar messages suppressed)",
                crate::log::PeerDisplay(src)
            );
        }
    }
}

/// The datagram's destination, from whichever pktinfo messages came.
/// Datagrams queued before the option was set (a socket passed by an
/// activator that does not set it, unlike systemd's `PassPacketInfo=`)
/// have none: a socket bound to one unicast address only ever receives
/// datagrams sent to it, so that address stands in; on a wildcard socket
/// `dst` stays None and there is no reply.
fn arrival(d: &crate::sys::Datagram, local: SocketAddr) -> Arrival {
    let (v4, v6) = (d.v4, d.v6);
    let mut a = Arrival {
        ifindex: v6.map_or(0, |i| i.ipi6_ifindex),
        ..Arrival::default()
    };
    // IPv4's own message, when it came (an IPv4 datagram on any socket),
    // says more than the IPv6 one.
    if let Some(i) = v4 {
        a.dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr))));
        // ipi_spec_dst is 0 for a datagram that was queued before the
        // option was set (the kernel fills it at arrival): unknown, and the
        // address checks alone decide.
        let spec = i.ipi_spec_dst.s_addr;
        a.broadcast = spec != 0 && spec != i.ipi_addr.s_addr;
    } else if let Some(i) = v6 {
        a.dst = Some(unmap(IpAddr::V6(Ipv6Addr::from(i.ipi6_addr.s6_addr))));
    } else if !local.ip().is_unspecified() {
        a.dst = Some(unmap(local.ip()));
    }
    a
}

/// `--inetd` with a datagram socket on descriptor 0 (inetd `dgram wait`,
/// systemd `ListenDatagram=` with `Accept=no` and `StandardInput=socket`):
/// answer what arrives until nothing has for `UDP_INETD_LINGER`, then exit
/// and let the activator watch the socket again. The access rules apply.
pub fn serve_inetd(fd: OwnedFd, gate: &mut Gate, buffer_size: usize, refuse: Ports) -> Result<()> {
    let sock = prepare(fd).map_err(|e| Error::sys("--inetd: descriptor 0", e))?;
    let mut socks = Sockets::new();
    let _ = socks.push(sock);
    let mut udp = Udp::new(socks, buffer_size, refuse);
    let mut stats = UdpStats::default();
    let linger =
        PollTimeout::try_from(UDP_INETD_LINGER.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    loop {
        let mut fds = [PollFd::new(udp.socks[0].fd.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, linger) {
            Ok(0) => break,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("--inetd: poll failed", e)),
        }
        udp.set_ready(1);
        udp.serve(gate, &mut stats);
    }
    crate::log!(Level::Debug, "udp: done, {stats}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sources_no_reply_may_go_to() {
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "ff02::1",
            "::ffff:0.0.0.0",
            "::ffff:224.0.0.1",
            "::ffff:255.255.255.255",
        ] {
            assert!(bad_source(ip(bad)), "{bad}");
        }
        for good in [
            "127.0.0.1",
            "127.255.0.1",
            "::1",
            "192.0.2.1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "223.255.255.255",
        ] {
            assert!(!bad_source(ip(good)), "{good}");
        }
    }

    #[test]
    fn one_turn_answers_at_most_a_batch() {
        use std::net::UdpSocket;
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let sock = prepare(OwnedFd::from(server)).unwrap();
        let to = sock.local;
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..UDP_BATCH + 10 {
            client.send_to(&[i as u8], to).unwrap();
        }
        let mut socks = Sockets::new();
        let _ = socks.push(sock);
        let mut udp = Udp::new(socks, 512, Ports::new());
        let policy = crate::admission::Policy::default();
        let mut gate = Gate::new(policy, b"", Instant::now());
        let mut stats = UdpStats::default();
        udp.set_ready(1);
        udp.serve(&mut gate, &mut stats);
        assert_eq!(stats.echoed, UDP_BATCH as u64, "one turn, one batch");
        udp.set_ready(1);
        udp.serve(&mut gate, &mut stats);
        assert_eq!(stats.echoed, UDP_BATCH as u64 + 10);
        client.set_nonblocking(true).unwrap();
        let mut b = [0u8; 4];
        for i in 0..UDP_BATCH + 10 {
            assert_eq!(client.recv_from(&mut b).unwrap(), (1, to));
            assert_eq!(b[0], i as u8);
        }
    }

    #[test]
    fn destinations_that_are_not_ours_alone() {
        let at = |d: &str, broadcast| Arrival {
            dst: Some(ip(d)),
            ifindex: 0,
            broadcast,
        };
        for (a, want) in [
            (at("127.0.0.1", false), false),
            (at("::1", false), false),
            (at("127.255.255.255", true), true),
            (at("192.168.1.255", true), true),
            (at("255.255.255.255", false), true),
            (at("224.0.0.1", false), true),
            (at("ff02::1", false), true),
            (at("0.0.0.0", false), true),
            (Arrival::default(), true),
        ] {
            assert_eq!(not_unicast(&a), want, "{a:?}");
        }
    }
}
