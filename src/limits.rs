//! Every capacity, range and default in one place.
//!
//! Capacities size the fixed tables (nothing grows after start-up), so they
//! are compile-time constants; ranges bound what the command line accepts and
//! are quoted by its error messages, so the text and the check cannot drift.

use core::ops::RangeInclusive;
use std::time::Duration;

/// Most listening addresses served by one process.
pub const MAX_LISTENERS: usize = 16;
/// Size of the child table; `--max-children` may not exceed it. 1024 live
/// processes is far past what a small board can hold.
pub const MAX_CHILDREN: usize = 1024;
/// Most `--allow`/`--deny` rules.
pub const MAX_RULES: usize = 32;
/// Sources whose rate window is tracked at once. When all are in use and
/// none has expired, the oldest window is recycled: a flood from more
/// sources than this weakens the per-source limit, which is what
/// `--global-rate` is for.
pub const RATE_SLOTS: usize = 256;

/// The port of the default listener (7 needs root; 7007 does not).
pub const DEFAULT_PORT: u16 = 7007;

/// `--max-children`.
pub const CHILDREN: RangeInclusive<u32> = 1..=MAX_CHILDREN as u32;
pub const DEFAULT_CHILDREN: u32 = 64;
/// `--backlog`.
pub const BACKLOG: RangeInclusive<u32> = 1..=65535;
pub const DEFAULT_BACKLOG: u32 = 128;
/// `--buffer-size`.
pub const BUFFER: RangeInclusive<u32> = 512..=1 << 20;
pub const DEFAULT_BUFFER: u32 = 65536;
/// `--idle-timeout` and `--max-session` (0: no limit).
pub const SESSION_SECS: RangeInclusive<u32> = 0..=86_400;
pub const DEFAULT_IDLE_SECS: u32 = 60;
pub const DEFAULT_SESSION_SECS: u32 = 900;
/// `--shutdown-timeout`.
pub const SHUTDOWN_SECS: RangeInclusive<u32> = 0..=3600;
pub const DEFAULT_SHUTDOWN_SECS: u32 = 5;
/// `--ipv6-prefix`.
pub const IPV6_PREFIX: RangeInclusive<u32> = 1..=128;
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
/// The N and SECS of `--rate N/SECS` and `--global-rate N/SECS`.
pub const RATE_N: RangeInclusive<u32> = 1..=1_000_000;
pub const RATE_SECS: RangeInclusive<u32> = 1..=86_400;
/// `--reject-message`: at most this many bytes (at least one) before the CRLF.
pub const REJECT_MESSAGE_MAX: usize = 200;
/// `--ready-fd`: any descriptor but 0 (stdin) and 2 (the log).
pub const READY_FD: RangeInclusive<i32> = 1..=65535;

/// Most `accept` calls on one listener per turn: one connection is taken per
/// turn, past at most this many retried errors (each loses the one queued
/// connection it names), so one listener cannot starve the others or delay
/// reaping.
pub const ACCEPT_BATCH: usize = 16;
/// Pause of the listeners after a resource error (fork failure, ENOBUFS,
/// ENOMEM): long enough to stop a busy loop, short enough to go unnoticed.
pub const SHORT_PAUSE: Duration = Duration::from_millis(200);
/// Pause when out of descriptors and the reserve could not be used.
pub const LONG_PAUSE: Duration = Duration::from_secs(1);
/// At most one line per kind of recurring error in this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);
/// Longest log line; longer ones are cut and end with `...`. The status
/// line with the UDP counters needs about 600 bytes with large totals.
pub const LINE_MAX: usize = 1024;
/// Bytes moved per splice: the default pipe capacity (16 pages).
pub const SPLICE_CHUNK: usize = 64 * 1024;
/// When the server ends a session, how long a peer may stay silent before
/// the child stops draining its input and closes (`Session::finish`)...
pub const DRAIN_QUIET: Duration = Duration::from_millis(500);
/// ...and how long it drains at most, against a peer that never stops.
pub const DRAIN_MAX: Duration = Duration::from_secs(5);
/// `--evict-after`: a session idle this long (or longer) may be ended to
/// make room for a new client at `--max-children`; 0 never evicts.
pub const EVICT_SECS: RangeInclusive<u32> = 0..=86_400;
pub const DEFAULT_EVICT_SECS: u32 = 1;

/// `--metrics-interval`: often enough for a 15 s scrape, rare enough that a
/// board's flash is not worn by the rewrites.
pub const METRICS_SECS: RangeInclusive<u32> = 1..=3600;
pub const DEFAULT_METRICS_SECS: u32 = 15;
/// Longest file name in it: the temporary `.NAME.tmp` must still fit the
/// kernel's NAME_MAX (255).
pub const METRICS_NAME_MAX: usize = 250;
/// The whole metrics text, formatted in place before the one write: every
/// counter at its 20-digit maximum fits with room to spare (a unit test in
/// `metrics` checks).
pub const METRICS_TEXT_MAX: usize = 4096;

/// Most `--udp` sockets, and datagram sockets passed by systemd.
pub const MAX_UDP: usize = MAX_LISTENERS;
/// `--udp-buffer`: the one receive buffer of the UDP echo. The default holds
/// the largest datagram IPv4 (65,507 bytes) and IPv6 without jumbograms
/// (65,527) can carry, so only a smaller setting ever drops one as too long.
pub const UDP_BUFFER: RangeInclusive<u32> = 512..=65536;
pub const DEFAULT_UDP_BUFFER: u32 = 65536;
/// Most datagrams answered per UDP socket per turn of the loop: enough to
/// keep up with a busy socket, few enough that a flood cannot delay
/// accepting or reaping by more than a few milliseconds.
pub const UDP_BATCH: usize = 32;
/// `--udp-refuse-ports`: at most this many ports.
pub const MAX_REFUSE_PORTS: usize = 32;
/// Source ports never answered: the small services (echo, discard, daytime,
/// qotd, chargen, time), which would answer an echo and start a loop.
pub const DEFAULT_REFUSE_PORTS: [u16; 6] = [7, 9, 13, 17, 19, 37];
/// `--inetd` with a datagram socket (inetd `dgram wait`): exit once no
/// datagram came for this long, handing the socket back to inetd.
pub const UDP_INETD_LINGER: Duration = Duration::from_secs(1);
