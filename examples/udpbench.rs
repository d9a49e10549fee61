//! Load generator for UDP echo servers (bench/udp.sh):
//!
//!   udpbench ADDR SIZE SECS WINDOW
//!
//! Keeps WINDOW datagrams of SIZE bytes in flight to ADDR for SECS seconds;
//! each reply is checked (length, sequence number, payload, source) and
//! answered with a new datagram. A window that sees no reply for 100 ms is
//! refilled (the missing ones count as lost). Prints one line:
//! `replies/s MiB/s lost bad`, where MiB/s is echoed payload per second
//! and bad counts replies that were not a request's exact bytes.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn payload(seq: u64, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend((0..size).map(|i| (i as u64).wrapping_mul(31).wrapping_add(seq) as u8));
    if size >= 8 {
        out[..8].copy_from_slice(&seq.to_le_bytes());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, size, secs, window] = &args[..] else {
        eprintln!("usage: udpbench ADDR SIZE SECS WINDOW");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("ADDR");
    let size: usize = size.parse().expect("SIZE");
    let secs: u64 = secs.parse().expect("SECS");
    let window: u64 = window.parse().expect("WINDOW");
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (mut next, mut replies, mut lost, mut bad, mut in_flight) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut out = Vec::with_capacity(size);
    let mut want = Vec::with_capacity(size);
    let mut buf = vec![0u8; 70_000];
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    while Instant::now() < end {
        while in_flight < window {
            payload(next, size, &mut out);
            next += 1;
            if s.send_to(&out, addr).is_ok() {
                in_flight += 1;
            }
        }
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                in_flight -= 1;
                let seq = if n >= 8 {
                    u64::from_le_bytes(buf[..8].try_into().unwrap())
                } else {
                    0
                };
                payload(seq, size, &mut want);
                if from == addr && n == size && buf[..n] == want[..] {
                    replies += 1;
                } else {
                    bad += 1;
                }
            }
            Err(_) => {
                lost += in_flight;
                in_flight = 0;
            }
        }
    }
    let t = start.elapsed().as_secs_f64();
    println!(
        "{:.0} {:.1} {} {}",
        replies as f64 / t,
        (replies * size as u64) as f64 / t / 1048576.0,
        lost,
        bad
    );
}
