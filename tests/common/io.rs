//! Talking to the server with deadlines (poll-based: QEMU user mode cannot be
//! trusted with SO_RCVTIMEO), and payloads both sides can check.

use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::io::Read;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

fn wait_readable(s: &TcpStream, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = left.as_millis().min(i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
    loop {
        match nix::poll::poll(&mut fds, PollTimeout::try_from(ms).unwrap()) {
            Ok(n) => return n > 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Reads exactly `n` bytes or panics at the deadline (poll-based: QEMU user
/// mode cannot be trusted with SO_RCVTIMEO).
pub fn read_exact_within(s: &mut TcpStream, n: usize, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        assert!(
            wait_readable(s, deadline),
            "timed out after {got} of {n} bytes"
        );
        match s.read(&mut out[got..]) {
            Ok(0) => panic!("EOF after {got} of {n} bytes"),
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read after {got} of {n} bytes: {e}"),
        }
    }
    out
}

/// Reads until EOF; panics at the deadline.
pub fn read_to_eof_within(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut out = vec![];
    let mut buf = [0u8; 65536];
    loop {
        assert!(
            wait_readable(s, deadline),
            "no EOF after {} bytes",
            out.len()
        );
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read after {} bytes: {e}", out.len()),
        }
    }
}

/// True when nothing (no byte, no EOF) arrives for `d`.
pub fn silent_for(s: &TcpStream, d: Duration) -> bool {
    !wait_readable(s, Instant::now() + d)
}

/// What happens next on a socket: EOF/reset (true) or data (false), bounded.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    if !wait_readable(s, Instant::now() + within) {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

/// xorshift64*: reproducible pseudo-random bytes without a crate.
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(n);
    v
}

/// FNV-1a 64: a digest both sides compute the same way.
pub fn digest(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
