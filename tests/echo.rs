//! The echo itself: exact bytes in, exact bytes out, under every way a client
//! may send and leave.

mod common;
use common::*;

/// Every echo path must behave the same to the peer (auto switches from
/// splice to copy mid-session on the multi-MiB tests).
const MODES: [&str; 3] = ["auto", "splice", "copy"];
use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, SystemTime};

#[test]
fn echoes_exact_bytes() {
    for mode in MODES {
        let srv = Server::start(&["--echo", mode]);
        let mut s = srv.connect();
        s.write_all(b"hello, forkecho\r\n").unwrap();
        assert_eq!(read_exact_within(&mut s, 17, SOON), b"hello, forkecho\r\n");
        // Nothing extra follows the echo.
        assert!(silent_for(&s, Duration::from_millis(200)));
    }
}

#[test]
fn echoes_all_256_byte_values() {
    for mode in MODES {
        let srv = Server::start(&["--echo", mode]);
        let all: Vec<u8> = (0..=255u8).collect();
        round_trip(&srv, &all);
        // Twice more in one connection, reversed, to catch any byte-value filter.
        let mut s = srv.connect();
        let rev: Vec<u8> = all.iter().rev().copied().collect();
        s.write_all(&rev).unwrap();
        s.write_all(&all).unwrap();
        let got = read_exact_within(&mut s, 512, SOON);
        assert_eq!(&got[..256], &rev[..]);
        assert_eq!(&got[256..], &all[..]);
    }
}

#[test]
fn multi_mib_random_payload_written_and_read_concurrently() {
    for mode in MODES {
        // Small buffer on purpose: thousands of read/write turns in the child.
        let srv = Server::start(&["--echo", mode, "--buffer-size", "4096"]);
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let payload = random_bytes(seed, 4 << 20);
        let want = digest(&payload);
        let mut s = srv.connect();
        let mut w = s.try_clone().unwrap();
        // Written from another thread while this one reads: a server that read
        // everything before writing (or the reverse) would deadlock here.
        let writer = std::thread::spawn(move || {
            w.write_all(&payload).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let got = read_to_eof_within(&mut s, Duration::from_secs(120));
        writer.join().unwrap();
        assert_eq!(got.len(), 4 << 20, "seed {seed}");
        assert_eq!(digest(&got), want, "digest mismatch, seed {seed}");
    }
}

/// Auto's phases on one connection: short messages copied through its small
/// window, a message of exactly the window's size (512 bytes: the switch),
/// then a stream (spliced, then copied once bulk) with a short tail, every
/// byte back in order.
#[test]
fn auto_short_messages_then_a_stream_then_short_again() {
    let srv = Server::start(&["--echo", "auto"]);
    let mut s = srv.connect();
    for (i, len) in [1usize, 64, 511, 512, 3].into_iter().enumerate() {
        let msg = random_bytes(i as u64, len);
        s.write_all(&msg).unwrap();
        assert_eq!(read_exact_within(&mut s, len, SOON), msg, "message {i}");
    }
    let payload = random_bytes(99, 1 << 20);
    let mut w = s.try_clone().unwrap();
    let p2 = payload.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&p2).unwrap();
        w.write_all(b"tail").unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let got = read_to_eof_within(&mut s, Duration::from_secs(60));
    writer.join().unwrap();
    assert_eq!(got.len(), payload.len() + 4);
    assert!(got[..payload.len()] == payload[..], "stream mismatch");
    assert_eq!(&got[payload.len()..], b"tail");
}

#[test]
fn several_messages_on_one_connection() {
    for mode in MODES {
        let srv = Server::start(&["--echo", mode]);
        let mut s = srv.connect();
        for (i, msg) in [&b"one"[..], b"two two", b"\x00\xff\n", b"four!"]
            .iter()
            .enumerate()
        {
            s.write_all(msg).unwrap();
            assert_eq!(
                read_exact_within(&mut s, msg.len(), SOON),
                *msg,
                "message {i}"
            );
        }
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            read_to_eof_within(&mut s, SOON),
            b"",
            "EOF after the last echo"
        );
    }
}

#[test]
fn half_close_gets_every_byte_then_eof() {
    for mode in MODES {
        let srv = Server::start(&["--echo", mode]);
        let mut s = srv.connect();
        let payload = random_bytes(7, 300_000);
        // Far more than the socket buffers hold, written before reading anything:
        // the server must keep echoing while we write, then close only after the
        // last byte.
        let mut w = s.try_clone().unwrap();
        let p2 = payload.clone();
        let t = std::thread::spawn(move || {
            w.write_all(&p2).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let got = read_to_eof_within(&mut s, Duration::from_secs(60));
        t.join().unwrap();
        assert_eq!(got.len(), payload.len());
        assert!(got == payload);
    }
}

#[test]
fn client_reset_mid_stream_is_survived() {
    for mode in MODES {
        let srv = Server::start(&["--echo", mode]);
        {
            let mut s = srv.connect();
            s.write_all(&random_bytes(3, 100_000)).unwrap();
            // SO_LINGER 0 turns close into a RST with data still unread.
            nix::sys::socket::setsockopt(
                &s,
                nix::sys::socket::sockopt::Linger,
                &nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            )
            .unwrap();
        }
        // The reset session ends quietly; the next client is served.
        assert_eq!(srv.wait_children(0, SOON), 0);
        round_trip(&srv, b"still here");
        assert!(
            !srv.log().contains("failed"),
            "a reset is not an error: {}",
            srv.log()
        );
        assert!(!srv.log().contains("exited with status"), "{}", srv.log());
    }
}

#[test]
fn hundred_and_twenty_concurrent_clients() {
    const N: usize = 120;
    let srv = Server::start(&["--max-children", "200", "--backlog", "256"]);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(N + 1));
    let addr = srv.addr;
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect_timeout(&addr, SOON).unwrap();
                let msg = format!("client {i} says hello");
                s.write_all(msg.as_bytes()).unwrap();
                assert_eq!(
                    read_exact_within(&mut s, msg.len(), Duration::from_secs(60)),
                    msg.as_bytes()
                );
                b.wait(); // all N connections open at once
                b.wait(); // the main thread has counted the children
                s.shutdown(Shutdown::Write).unwrap();
                assert_eq!(read_to_eof_within(&mut s, Duration::from_secs(60)), b"");
            })
        })
        .collect();
    barrier.wait();
    let live = srv.wait_children(N, SOON);
    barrier.wait();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(live, N, "one child per open connection");
    assert_eq!(srv.wait_children(0, SOON), 0);
}
