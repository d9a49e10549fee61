//! The UDP echo (`--udp`): exact echo of every size a datagram can have,
//! the reply's source address, each guard against reflection and loops with
//! a refused and an allowed datagram, the access rules and rates, TCP
//! during a UDP flood, and socket activation with a real activator.

mod common;
use common::*;
use nix::sys::signal::Signal;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

/// After the counters say a datagram was handled, a reply would already be
/// queued on loopback: a short look is enough to see there is none.
const QUIET: Duration = Duration::from_millis(200);

fn start(args: &[&str], n_udp: usize) -> (Server, Vec<SocketAddr>) {
    let srv = Server::start(args);
    let addrs = udp_addrs(&srv, n_udp);
    (srv, addrs)
}

#[test]
fn echoes_every_datagram_size_byte_for_byte_v4_and_v6() {
    let (srv, addrs) = start(&["--udp", "127.0.0.1:0", "--udp", "[::1]:0"], 2);
    let mut total = 0u64;
    let mut count = 0u64;
    for (to, client, sizes) in [
        (addrs[0], "127.0.0.1:0", &[0, 1, 1472, 8192, 65_507][..]),
        (addrs[1], "[::1]:0", &[0, 1, 1472, 8192, 65_507, 65_527][..]),
    ] {
        let c = udp_client(client);
        for (i, &n) in sizes.iter().enumerate() {
            let payload = random_bytes(i as u64 + n as u64, n);
            let (got, from) = udp_echo(&c, to, &payload);
            assert_eq!(got.len(), n, "to {to}");
            assert!(got == payload, "{n} bytes to {to} came back changed");
            assert_eq!(from, to);
            total += n as u64;
            count += 1;
        }
    }
    assert_eq!(srv.counter("udp_echoed"), count);
    assert_eq!(srv.counter("udp_bytes"), total);
    // One process: the parent answered, no child was forked.
    assert_eq!(srv.counter("accepted"), 0);
    assert_eq!(srv.children().0.len(), 0);
}

#[test]
fn a_datagram_longer_than_the_buffer_is_dropped_not_cut() {
    let (srv, addrs) = start(&["--udp", "127.0.0.1:0", "--udp-buffer", "1472"], 1);
    let c = udp_client("127.0.0.1:0");
    c.send_to(&random_bytes(1, 1473), addrs[0]).unwrap();
    assert_eq!(wait_counter(&srv, "udp_too_long", 1), 1, "{}", srv.log());
    assert!(recv_within(&c, QUIET).is_none(), "a cut echo came back");
    let full = random_bytes(2, 1472);
    assert_eq!(udp_echo(&c, addrs[0], &full).0, full);
    assert_eq!(srv.counter("udp_echoed"), 1);
    assert!(
        srv.log().contains("longer than --udp-buffer"),
        "{}",
        srv.log()
    );
}

#[test]
fn the_reply_leaves_from_the_address_the_request_went_to() {
    // Wildcard sockets, IPv4 and dual-stack IPv6: without pktinfo the
    // kernel would answer from 127.0.0.1 whatever address was asked.
    for wildcard in ["0.0.0.0:0", "[::]:0"] {
        let (_srv, addrs) = start(&["--udp", wildcard], 1);
        let port = addrs[0].port();
        let c = udp_client("127.0.0.1:0");
        for dst in ["127.0.0.2", "127.0.0.1", "127.1.2.3"] {
            let to: SocketAddr = format!("{dst}:{port}").parse().unwrap();
            let (got, from) = udp_echo(&c, to, b"where from?");
            assert_eq!(got, b"where from?");
            assert_eq!(from, to, "{wildcard}: asked {to}, answered from {from}");
        }
        if wildcard.starts_with('[') {
            let c6 = udp_client("[::1]:0");
            let to: SocketAddr = format!("[::1]:{port}").parse().unwrap();
            assert_eq!(udp_echo(&c6, to, b"v6").1, to);
        }
    }
}

#[test]
fn small_service_ports_get_no_reply_unless_allowed() {
    let (srv, addrs) = start(&["--udp", "127.0.0.1:0"], 1);
    // chargen and echo: the two halves of the classic UDP loop.
    for (i, from) in ["127.0.0.1:19", "127.0.0.1:7"].iter().enumerate() {
        let c = udp_client(from);
        c.send_to(b"loop?", addrs[0]).unwrap();
        assert_eq!(
            wait_counter(&srv, "udp_refused_port", i as u64 + 1),
            i as u64 + 1
        );
        assert!(recv_within(&c, QUIET).is_none(), "answered {from}");
    }
    let c = udp_client("127.0.0.1:0");
    assert_eq!(udp_echo(&c, addrs[0], b"fine").0, b"fine");
    assert_eq!(srv.counter("udp_echoed"), 1);
    assert!(srv
        .log()
        .contains("udp: no reply to 127.0.0.1:19: source port refused"));

    // The list is configurable: port 19 answered, 4242 refused.
    let (srv, addrs) = start(&["--udp", "127.0.0.1:0", "--udp-refuse-ports", "4242"], 1);
    let c = udp_client("127.0.0.3:19");
    assert_eq!(udp_echo(&c, addrs[0], b"chargen").0, b"chargen");
    let c = udp_client("127.0.0.3:4242");
    c.send_to(b"x", addrs[0]).unwrap();
    assert_eq!(wait_counter(&srv, "udp_refused_port", 1), 1);
    assert!(recv_within(&c, QUIET).is_none());
    let (srv, addrs) = start(&["--udp", "127.0.0.1:0", "--udp-refuse-ports", "none"], 1);
    let c = udp_client("127.0.0.4:7");
    assert_eq!(udp_echo(&c, addrs[0], b"echo").0, b"echo");
    assert_eq!(srv.counter("udp_refused_port"), 0);
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => panic!("{a} is not IPv4"),
    }
}

#[test]
fn source_port_zero_and_impossible_sources_get_no_reply() {
    let (srv, addrs) = start(&["--udp", "127.0.0.1:0"], 1);
    let to = v4(addrs[0]);
    raw_udp_v4("127.0.0.1".parse().unwrap(), 0, to, b"port zero");
    assert_eq!(
        wait_counter(&srv, "udp_refused_port0", 1),
        1,
        "{}",
        srv.log()
    );
    let bad = ["0.1.2.3", "224.0.0.9", "240.0.0.1", "255.255.255.255"];
    for (i, src) in bad.iter().enumerate() {
        raw_udp_v4(src.parse().unwrap(), 4444, to, b"spoofed");
        assert_eq!(
            wait_counter(&srv, "udp_refused_source", i as u64 + 1),
            i as u64 + 1,
            "{src}: {}",
            srv.log()
        );
    }
    // The same way in from a real address is answered (to a socket of ours).
    let c = udp_client("127.0.0.5:0");
    let port = c.local_addr().unwrap().port();
    raw_udp_v4("127.0.0.5".parse().unwrap(), port, to, b"real");
    let (got, from) = recv_within(&c, SOON).expect("no reply to a raw datagram");
    assert_eq!((got.as_slice(), from), (&b"real"[..], addrs[0]));
    assert_eq!(srv.counter("udp_echoed"), 1);
    assert_eq!(srv.counter("udp_failed"), 0);
}

#[test]
fn a_broadcast_gets_no_reply() {
    // 127.255.255.255 is lo's broadcast address: a datagram to it reaches a
    // wildcard socket as a broadcast, without leaving the machine.
    let (srv, addrs) = start(&["--udp", "0.0.0.0:0"], 1);
    let port = addrs[0].port();
    let c = udp_client("127.0.0.1:0");
    c.set_broadcast(true).unwrap();
    let bcast: SocketAddr = format!("127.255.255.255:{port}").parse().unwrap();
    c.send_to(b"everyone?", bcast).unwrap();
    assert_eq!(
        wait_counter(&srv, "udp_refused_dest", 1),
        1,
        "{}",
        srv.log()
    );
    assert!(recv_within(&c, QUIET).is_none(), "a broadcast was answered");
    let uni: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(udp_echo(&c, uni, b"just you").0, b"just you");
    assert!(srv
        .log()
        .contains("sent to a broadcast or multicast address"));
}

#[test]
fn access_rules_and_rates_apply_to_datagrams() {
    let (srv, addrs) = start(
        &[
            "--udp",
            "127.0.0.1:0",
            "--deny",
            "127.0.0.9",
            "--rate",
            "3/60",
        ],
        1,
    );
    let denied = udp_client("127.0.0.9:0");
    denied.send_to(b"no", addrs[0]).unwrap();
    assert_eq!(wait_counter(&srv, "udp_refused_deny", 1), 1);
    assert!(recv_within(&denied, QUIET).is_none());
    let c = udp_client("127.0.0.10:0");
    for i in 0..3u8 {
        assert_eq!(udp_echo(&c, addrs[0], &[i]).0, [i]);
    }
    c.send_to(b"over", addrs[0]).unwrap();
    assert_eq!(wait_counter(&srv, "udp_refused_rate", 1), 1);
    assert!(recv_within(&c, QUIET).is_none());
    // Another source has its own window.
    let other = udp_client("127.0.0.11:0");
    assert_eq!(udp_echo(&other, addrs[0], b"mine").0, b"mine");
    // Counted as UDP's, not as refused connections.
    assert_eq!(srv.counter("refused_deny"), 0);
    assert_eq!(srv.counter("refused_rate"), 0);

    let (srv, addrs) = start(&["--udp", "127.0.0.1:0", "--global-rate", "2/60"], 1);
    for src in ["127.0.0.12:0", "127.0.0.13:0"] {
        assert_eq!(udp_echo(&udp_client(src), addrs[0], b"ok").0, b"ok");
    }
    let c = udp_client("127.0.0.14:0");
    c.send_to(b"third", addrs[0]).unwrap();
    assert_eq!(wait_counter(&srv, "udp_refused_global_rate", 1), 1);
    assert!(recv_within(&c, QUIET).is_none());
}

#[test]
fn tcp_is_served_while_a_udp_flood_runs() {
    let (srv, addrs) = start(&["--udp", "127.0.0.1:0"], 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|i| {
            let stop = stop.clone();
            let to = addrs[0];
            std::thread::spawn(move || {
                // Replies are never read: they fill this socket's buffer and
                // are dropped by the kernel, as a reflection victim's would.
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                let payload = random_bytes(i, 512);
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if s.send_to(&payload, to).is_ok() {
                        sent += 1;
                    }
                }
                sent
            })
        })
        .collect();
    let started = Instant::now();
    for i in 0..20 {
        round_trip(&srv, format!("tcp during the flood {i}").as_bytes());
    }
    let tcp_time = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: u64 = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    let echoed = srv.counter("udp_echoed");
    assert!(echoed > 0, "the flood was not served at all ({sent} sent)");
    // The client sees the last echo's EOF when the child closes, a moment
    // before the parent reaps it: count the ends once all are reaped.
    assert_eq!(srv.wait_children(0, SOON), 0);
    assert_eq!(srv.counter("exited_ok"), 20);
    assert!(tcp_time < SOON, "20 TCP echoes took {tcp_time:?}");
    eprintln!("20 TCP echoes in {tcp_time:?} during a flood of {sent} datagrams, {echoed} echoed");
}

/// The datagram activator on a probed free port: the server and its address.
fn datagram_activator(args: &[&str], server_args: &[&str]) -> (Server, SocketAddr) {
    let srv = activator(args, server_args);
    let to = srv.addr;
    (srv, to)
}

#[test]
fn socket_activation_passes_datagram_sockets() {
    let (mut srv, to) = datagram_activator(&["--datagram"], &["-v"]);
    // The first datagram makes the activator exec forkecho, which finds it
    // waiting on the passed socket.
    let c = udp_client("127.0.0.1:0");
    assert_eq!(udp_echo(&c, to, b"activated").0, b"activated");
    assert_eq!(udp_echo(&c, to, b"again").0, b"again");
    assert_eq!(udp_addrs(&srv, 1), vec![to]);
    assert_eq!(srv.counter("udp_echoed"), 2);
    srv.signal(Signal::SIGTERM);
    assert_eq!(srv.wait_exit(SOON).code(), Some(0));
}

#[test]
fn inetd_mode_answers_pending_datagrams_and_exits() {
    // inetd `dgram wait`: the socket is descriptor 0; the server answers
    // and, after a quiet second, exits so the activator can take over.
    let (mut srv, to) = datagram_activator(&["--datagram", "--inetd"], &["--inetd", "-v"]);
    let c = udp_client("127.0.0.1:0");
    let from19 = udp_client("127.0.0.6:19");
    assert_eq!(udp_echo(&c, to, b"inetd").0, b"inetd");
    from19.send_to(b"loop?", to).unwrap();
    assert_eq!(udp_echo(&c, to, b"twice").0, b"twice");
    assert!(recv_within(&from19, QUIET).is_none());
    assert_eq!(srv.wait_exit(SOON).code(), Some(0), "{}", srv.log());
    let log = srv.log();
    assert!(log.contains("udp_echoed=2 udp_bytes=10"), "{log}");
    assert!(log.contains("udp_refused_port=1"), "{log}");
}

#[test]
fn bad_udp_options_are_one_line() {
    for (args, want) in [
        (
            &["--udp", "localhost:7"][..],
            "--udp localhost:7: expected ADDR:PORT",
        ),
        (
            &["--udp", "127.0.0.1:7", "--udp", "127.0.0.1:7"],
            "--udp 127.0.0.1:7: given twice",
        ),
        (
            &["--udp-buffer", "511"],
            "--udp-buffer 511: must be in 512..=65536",
        ),
        (
            &["--udp-buffer", "65537"],
            "--udp-buffer 65537: must be in 512..=65536",
        ),
        (
            &["--udp-refuse-ports", "7,0"],
            "--udp-refuse-ports 7,0: expected none or ports",
        ),
        (&["--udp-refuse-ports", "7,,9"], "--udp-refuse-ports 7,,9"),
        (&["--udp-refuse-ports", "65536"], "--udp-refuse-ports 65536"),
        (
            &["--inetd", "--udp", "127.0.0.1:7"],
            "--udp needs the listening server",
        ),
    ] {
        assert_one_line_error(args, 2, &[want]);
    }
    let (_, help, _) = run_to_end(&["--help"]);
    for opt in ["--udp ", "--udp-refuse-ports", "--udp-buffer"] {
        assert!(help.contains(opt), "{opt} not in --help");
    }
}
