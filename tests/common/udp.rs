//! Talking to the UDP echo: clients from chosen addresses, replies with
//! deadlines (poll-based, as for TCP), hand-made datagrams for what a normal
//! socket cannot send.

use super::server::{Server, SOON};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// The UDP addresses the server announced ("listening on udp ..."), once it
/// has announced `n`.
pub fn udp_addrs(srv: &Server, n: usize) -> Vec<SocketAddr> {
    assert_eq!(
        srv.wait_log_count("listening on udp ", n, SOON),
        n,
        "{}",
        srv.log()
    );
    srv.log()
        .lines()
        .filter_map(|l| l.split("listening on udp ").nth(1))
        .map(|a| a.trim().parse().unwrap())
        .collect()
}

/// A client socket bound to `addr` ("127.0.0.1:0", "127.0.0.1:19", "[::1]:0").
pub fn udp_client(addr: &str) -> UdpSocket {
    UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
}

/// The next datagram and its source, or None when nothing came in `within`.
pub fn recv_within(s: &UdpSocket, within: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::try_from(ms).unwrap()) {
            Ok(0) => return None,
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
    let mut buf = vec![0u8; 70_000];
    let (n, from) = s.recv_from(&mut buf).expect("recv_from");
    buf.truncate(n);
    Some((buf, from))
}

/// Sends `payload` to `to` and returns the reply and where it came from;
/// panics if none comes.
pub fn udp_echo(s: &UdpSocket, to: SocketAddr, payload: &[u8]) -> (Vec<u8>, SocketAddr) {
    s.send_to(payload, to).expect("send_to");
    recv_within(s, SOON).unwrap_or_else(|| panic!("no reply to {} bytes", payload.len()))
}

/// Waits until the status line's counter `name` reaches `want`; returns it.
pub fn wait_counter(srv: &Server, name: &str, want: u64) -> u64 {
    let deadline = Instant::now() + SOON;
    loop {
        let v = srv.counter(name);
        if v >= want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One UDP datagram with a made-up IPv4 header (a raw `IPPROTO_RAW` socket:
/// needs root), for sources a normal socket cannot have. Checksum 0: none.
pub fn raw_udp_v4(src: Ipv4Addr, sport: u16, dst: SocketAddrV4, payload: &[u8]) {
    let len = 28 + payload.len();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Raw,
    )
    .expect("raw socket (tests run as root)");
    let to = SockaddrIn::from(SocketAddrV4::new(*dst.ip(), 0));
    socket::sendto(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &p,
        &to,
        socket::MsgFlags::empty(),
    )
    .expect("raw sendto");
}
