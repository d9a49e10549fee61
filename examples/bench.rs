//! Load generator and non-forking reference server for `bench/run.sh`.
//!
//! ```text
//! bench connrate ADDR CONCURRENCY SECONDS   connect, send 64 B, read them back, close
//! bench stream   ADDR MIB                   one connection, write and read concurrently
//! bench idle     ADDR COUNT                 hold COUNT connections until stdin closes
//! bench serve    ADDR THREADS               echo server without fork (the reference)
//! ```
//!
//! Results are one line of `key=value` pairs on stdout, for the script to
//! collect. Timings are only meaningful as ratios within one run.

use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str {
        args.get(i).map(String::as_str).unwrap_or_else(|| {
            eprintln!("usage: bench connrate|stream|idle|serve ADDR N [SECONDS]");
            std::process::exit(2)
        })
    };
    let addr: SocketAddr = arg(1).parse().expect("ADDR:PORT");
    let num = |i: usize| -> u64 { arg(i).parse().expect("a number") };
    match arg(0) {
        "connrate" => connrate(addr, num(2) as usize, Duration::from_secs(num(3))),
        "stream" => stream(addr, num(2) as usize),
        "idle" => idle(addr, num(2) as usize),
        "serve" => serve(addr, num(2) as usize),
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2)
        }
    }
}

/// The source address of connection `n` of client `i` to a 127.0.0.0/8
/// server: spread over 127.1.0.0/16 (`None` for any other server).
///
/// Why: the client half-closes first, so TIME_WAIT stays on the client side,
/// one socket per connection for 60 s. From a single source address a
/// client making ~15,000 connections a second runs through the 28,000
/// ephemeral ports in two seconds, and connect then waits for ports it may
/// reuse: a stall of ~40 ms on some connections that held a non-forking
/// server at ~14,500/s (p99 45 ms) where it serves ~47,000/s (p99 2.5 ms)
/// when the sources are spread. Forking servers run at the same rate
/// either way.
fn source_for(addr: SocketAddr, i: usize, n: usize) -> Option<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) if a.ip().is_loopback() => Some(SocketAddrV4::new(
            Ipv4Addr::new(127, 1, (i % 256) as u8, 1 + (n % 250) as u8),
            0,
        )),
        _ => None,
    }
}

/// `connect` from `src` (any port: the kernel picks one at connect time,
/// unique per 4-tuple), or from wherever the kernel likes.
fn connect_from(addr: SocketAddr, src: Option<SocketAddrV4>) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    use std::os::fd::AsRawFd;
    let (Some(src), SocketAddr::V4(to)) = (src, addr) else {
        return TcpStream::connect(addr);
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::IpBindAddressNoPort, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(src))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(to))?;
    Ok(TcpStream::from(fd))
}

/// One full echo conversation; returns its duration or an error.
fn one_connection(
    addr: SocketAddr,
    src: Option<SocketAddrV4>,
    msg: &[u8; 64],
) -> std::io::Result<Duration> {
    let t = Instant::now();
    let mut s = connect_from(addr, src)?;
    s.set_nodelay(true)?;
    s.write_all(msg)?;
    // Half-close, then read the echo and the server's EOF (the client thus
    // closes first and keeps the TIME_WAIT: see `source_for`).
    s.shutdown(Shutdown::Write)?;
    let mut got = [0u8; 65];
    let mut n = 0;
    loop {
        match s.read(&mut got[n..])? {
            0 => break,
            k => n += k,
        }
        if n > 64 {
            break;
        }
    }
    if n != 64 || &got[..64] != msg {
        return Err(std::io::Error::other("wrong echo"));
    }
    Ok(t.elapsed())
}

fn connrate(addr: SocketAddr, concurrency: usize, dur: Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|i| {
            let stop = stop.clone();
            let errors = errors.clone();
            std::thread::spawn(move || {
                let msg = [b'a' + (i % 26) as u8; 64];
                let mut lat = Vec::with_capacity(1 << 16);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match one_connection(addr, source_for(addr, i, n), &msg) {
                        Ok(d) => lat.push(d),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
    };
    println!(
        "conns={} conn_per_s={:.0} errors={} p50_us={:.0} p99_us={:.0}",
        lat.len(),
        lat.len() as f64 / secs,
        errors.load(Ordering::Relaxed),
        pct(0.50),
        pct(0.99)
    );
}

fn stream(addr: SocketAddr, mib: usize) {
    let total = mib << 20;
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut w = s.try_clone().unwrap();
    let t = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut block = [0u8; 65536];
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        for _ in 0..total / block.len() {
            w.write_all(&block).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0usize;
    let mut ok = true;
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        for (j, &b) in buf[..n].iter().enumerate() {
            ok &= b == (((got + j) % 65536) * 7 + 3) as u8;
        }
        got += n;
    }
    writer.join().unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "bytes={got} mib_per_s={:.1} verified={}",
        got as f64 / (1 << 20) as f64 / secs,
        ok && got == total
    );
    if !(ok && got == total) {
        std::process::exit(1);
    }
}

fn idle(addr: SocketAddr, count: usize) {
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let mut s = TcpStream::connect(addr).expect("connect");
        // One round trip proves a child is serving this connection.
        s.write_all(&[i as u8]).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        held.push(s);
    }
    println!("holding={count}");
    std::io::stdout().flush().unwrap();
    // Until the script closes our stdin.
    for _ in std::io::stdin().lock().lines() {}
}

fn serve(addr: SocketAddr, threads: usize) {
    let l = Arc::new(TcpListener::bind(addr).expect("bind"));
    println!("listening on {}", l.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let l = l.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let Ok((mut s, _)) = l.accept() else { continue };
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(Shutdown::Write);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}
