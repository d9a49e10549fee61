//! Admission control, decided in the parent between `accept` and `fork`:
//! access rules (`--allow`/`--deny`), rate limits (`--rate`,
//! `--global-rate`) and concurrent connections per source (`--max-per-ip`).
//! A refused client costs one accept and one close, never a fork.
//! [`Gate::check`] is the one call the supervisor makes; concurrent
//! connections per source are counted in the child table (`children`), which
//! knows them without a table of its own.
//!
//! Addresses are compared as 128-bit numbers: IPv4 (and IPv4-mapped IPv6,
//! which a dual-stack socket reports) as `::ffff:a.b.c.d`, so one rule or
//! one table covers both families. Every table is a fixed `heapless::Vec`
//! whose capacity can never be exceeded by construction (see each table);
//! nothing here allocates.

use crate::limits::{MAX_RULES, RATE_N, RATE_SECS, RATE_SLOTS};
use crate::log::{Level, LogLimit};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// An address as a number, IPv4 mapped into IPv6.
fn bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(v4) => (true, u128::from(v4.to_ipv6_mapped())),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(_) => (true, u128::from(v6)),
            None => (false, u128::from(v6)),
        },
    }
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// `10.0.0.0/8`, `192.0.2.7` (a /32), `2001:db8::/32`, `::1` (a /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    v4: bool,
    net: u128,
    /// Prefix length in the 128-bit space (an IPv4 /8 is 104).
    len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let ip: IpAddr = addr.parse().ok()?;
        let (v4, net) = bits(ip);
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return None;
        }
        let len = if ip.is_ipv4() { len + 96 } else { len };
        // Host bits set (10.1.2.3/8) are a typo more often than not.
        if net & !mask(len) != 0 {
            return None;
        }
        Some(Cidr { v4, net, len })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let (v4, b) = bits(ip);
        v4 == self.v4 && (b ^ self.net) & mask(self.len) == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub cidr: Cidr,
}

/// `N/SECS`: at most N connections in a window of SECS seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub n: u32,
    pub per: Duration,
}

impl Rate {
    pub fn parse(text: &str) -> Option<Rate> {
        let (n, secs) = text.split_once('/')?;
        let n: u32 = n.parse().ok()?;
        let secs: u32 = secs.parse().ok()?;
        (RATE_N.contains(&n) && RATE_SECS.contains(&secs)).then(|| Rate {
            n,
            per: Duration::from_secs(secs.into()),
        })
    }
}

/// One fixed window: counts connections from `start` for `per`.
#[derive(Clone, Copy)]
struct Window {
    key: u128,
    start: Instant,
    count: u32,
}

impl Window {
    /// Whether one more connection fits now. A window that has passed
    /// counts as empty.
    fn fits(&self, rate: Rate, now: Instant) -> bool {
        now.duration_since(self.start) >= rate.per || self.count < rate.n
    }

    /// Counts one admitted connection, restarting a window that has passed.
    /// Only admitted connections count: a client refused by any check
    /// spends nobody's budget, its own included.
    fn count(&mut self, rate: Rate, now: Instant) {
        if now.duration_since(self.start) >= rate.per {
            self.start = now;
            self.count = 0;
        }
        self.count += 1;
    }
}

/// Why a connection was refused; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Deny,
    GlobalRate,
    Rate,
    PerIp,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Deny => "denied by the access rules",
            Refusal::GlobalRate => "over --global-rate",
            Refusal::Rate => "over --rate for its address",
            Refusal::PerIp => "over --max-per-ip",
        }
    }
}

/// The configuration, as the command line gives it.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub rules: heapless::Vec<Rule, MAX_RULES>,
    pub rate: Option<Rate>,
    pub global_rate: Option<Rate>,
    /// 0: no limit.
    pub max_per_ip: u32,
    /// Prefix that makes one IPv6 "address" for `--rate` and
    /// `--max-per-ip`: a host usually owns a whole /64.
    pub ipv6_prefix: u8,
}

impl Policy {
    /// First matching rule decides. With no match: allowed, unless there
    /// are `--allow` rules, which then read as "only these".
    pub fn allows(&self, ip: IpAddr) -> bool {
        match self.rules.iter().find(|r| r.cidr.contains(ip)) {
            Some(r) => r.allow,
            None => !self.rules.iter().any(|r| r.allow),
        }
    }

    /// The key that identifies a source for the per-address limits.
    pub fn key(&self, ip: IpAddr) -> u128 {
        match bits(ip) {
            (true, b) => b,
            (false, b) => b & mask(self.ipv6_prefix),
        }
    }
}

/// The rate windows: per source, and one for everything.
pub struct Rates {
    slots: heapless::Vec<Window, RATE_SLOTS>,
    global: Window,
}

impl Rates {
    pub fn new(now: Instant) -> Rates {
        Rates {
            slots: heapless::Vec::new(),
            global: Window {
                key: 0,
                start: now,
                count: 0,
            },
        }
    }

    /// The rate checks, per source first (a flooder is refused for its own
    /// rate and never reaches the shared one); counts nothing.
    fn check(&self, p: &Policy, key: u128, now: Instant) -> Result<(), Refusal> {
        if let Some(rate) = p.rate {
            if let Some(w) = self.slots.iter().find(|w| w.key == key) {
                if !w.fits(rate, now) {
                    return Err(Refusal::Rate);
                }
            }
        }
        match p.global_rate {
            Some(rate) if !self.global.fits(rate, now) => Err(Refusal::GlobalRate),
            _ => Ok(()),
        }
    }

    /// Counts an admitted connection in its source's window and the global
    /// one.
    fn count(&mut self, p: &Policy, key: u128, now: Instant) {
        if let Some(rate) = p.global_rate {
            self.global.count(rate, now);
        }
        let Some(rate) = p.rate else { return };
        let i = match self.slots.iter().position(|w| w.key == key) {
            Some(i) => i,
            None => {
                let fresh = Window {
                    key,
                    start: now,
                    count: 0,
                };
                if self.slots.push(fresh).is_ok() {
                    self.slots.len() - 1
                } else {
                    // Full: recycle the oldest window (expired ones first,
                    // as they are older than any live one).
                    let i = (0..self.slots.len())
                        .min_by_key(|&i| self.slots[i].start)
                        .unwrap_or(0);
                    self.slots[i] = fresh;
                    i
                }
            }
        };
        self.slots[i].count(rate, now);
    }

    /// Check, and count if admitted.
    #[cfg(test)]
    fn admit(&mut self, p: &Policy, key: u128, now: Instant) -> Result<(), Refusal> {
        self.check(p, key, now)?;
        self.count(p, key, now);
        Ok(())
    }
}

/// Admission as one call: the policy, the rate windows, and what a refused
/// client is told.
pub struct Gate {
    policy: Policy,
    rates: Rates,
    /// Sent to a client refused by a limit, before closing; empty for none.
    reject_message: Box<[u8]>,
    /// One "refused" line per interval, whatever the flood.
    log: LogLimit,
}

impl Gate {
    pub fn new(policy: Policy, reject_message: &[u8], now: Instant) -> Gate {
        Gate {
            policy,
            rates: Rates::new(now),
            reject_message: reject_message.into(),
            log: LogLimit::default(),
        }
    }

    /// The checks, in order: access rules, connections per source (`live(key)`
    /// is how many the source holds now), rate per source, global rate. Only
    /// a connection that passes them all is counted in the rate windows, so a
    /// refused one spends no budget, the flooder's or anyone else's.
    /// `Ok(key)` admits, under the key the child is then filed with (`None`:
    /// the peer's address is unknown, so no per-source limit applies).
    pub fn check(
        &mut self,
        peer: Option<SocketAddr>,
        live: impl Fn(u128) -> u32,
        now: Instant,
    ) -> Result<Option<u128>, Refusal> {
        let Some(ip) = peer.map(|p| unmap(p.ip())) else {
            return Ok(None);
        };
        let p = &self.policy;
        let key = p.key(ip);
        if !p.allows(ip) {
            return Err(Refusal::Deny);
        }
        if p.max_per_ip > 0 && live(key) >= p.max_per_ip {
            return Err(Refusal::PerIp);
        }
        if p.rate.is_some() || p.global_rate.is_some() {
            self.rates.check(p, key, now)?;
            self.rates.count(p, key, now);
        }
        Ok(Some(key))
    }

    /// Closes a refused connection: a client over a limit may be told why
    /// (one non-blocking send: a fresh socket's buffer holds the few bytes,
    /// and a peer that cannot take them is not waited for); a denied client
    /// learns nothing. Logs at most one line per interval.
    pub fn refuse(&mut self, conn: OwnedFd, peer: Option<SocketAddr>, why: Refusal) {
        if why != Refusal::Deny && !self.reject_message.is_empty() {
            use nix::sys::socket::MsgFlags;
            let _ = nix::sys::socket::send(
                conn.as_raw_fd(),
                &self.reject_message,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            );
        }
        drop(conn);
        if let Some(held) = self.log.allow(Instant::now()) {
            crate::log!(
                Level::Info,
                "refused {}: {} ({held} similar messages suppressed)",
                crate::log::PeerIp(peer),
                why.name()
            );
        }
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`: a dual-stack socket reports IPv4 clients
/// that way, and people read and write them as IPv4.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy(rules: &[(bool, &str)]) -> Policy {
        let mut p = Policy {
            ipv6_prefix: 64,
            ..Policy::default()
        };
        for &(allow, c) in rules {
            let cidr = Cidr::parse(c).unwrap();
            p.rules.push(Rule { allow, cidr }).unwrap();
        }
        p
    }

    #[test]
    fn cidr_parsing() {
        assert!(Cidr::parse("10.0.0.0/8").is_some());
        assert!(Cidr::parse("0.0.0.0/0").is_some());
        assert!(Cidr::parse("192.0.2.7").is_some());
        assert!(Cidr::parse("2001:db8::/32").is_some());
        assert!(Cidr::parse("::/0").is_some());
        for bad in [
            "10.0.0.0/33",
            "10.1.0.0/8",
            "::/129",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/",
            "",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn rules_first_match_and_default() {
        let p = policy(&[(false, "10.1.0.0/16"), (true, "10.0.0.0/8")]);
        assert!(!p.allows(ip("10.1.2.3")));
        assert!(p.allows(ip("10.2.0.1")));
        // A dual-stack socket's view of the same IPv4 client.
        assert!(!p.allows(ip("::ffff:10.1.2.3")));
        assert!(p.allows(ip("::ffff:10.2.0.1")));
        // --allow present and no match: refused.
        assert!(!p.allows(ip("192.0.2.1")));
        // Only --deny rules: everything else is allowed.
        let p = policy(&[(false, "192.0.2.0/24")]);
        assert!(!p.allows(ip("192.0.2.9")));
        assert!(p.allows(ip("198.51.100.1")));
        // IPv6 rules never match IPv4 and back.
        let p = policy(&[(false, "::/0")]);
        assert!(p.allows(ip("127.0.0.1")));
        assert!(!p.allows(ip("::1")));
        let p = policy(&[(false, "0.0.0.0/0")]);
        assert!(!p.allows(ip("::ffff:127.0.0.1")));
        assert!(p.allows(ip("::1")));
        assert!(policy(&[]).allows(ip("::1")));
    }

    #[test]
    fn ipv6_sources_group_by_prefix() {
        let p = policy(&[]);
        assert_eq!(
            p.key(ip("2001:db8:0:1::1")),
            p.key(ip("2001:db8:0:1::ffff"))
        );
        assert_ne!(p.key(ip("2001:db8:0:1::1")), p.key(ip("2001:db8:0:2::1")));
        assert_eq!(p.key(ip("127.0.0.1")), p.key(ip("::ffff:127.0.0.1")));
        assert_ne!(p.key(ip("127.0.0.1")), p.key(ip("127.0.0.2")));
    }

    #[test]
    fn no_peer_has_a_key_no_address_has() {
        let mut g = Gate::new(policy(&[]), b"", Instant::now());
        let now = Instant::now();
        let none = g.check(None, |_| 0, now).unwrap();
        let v6 = g
            .check(Some("[::1]:9".parse().unwrap()), |_| 0, now)
            .unwrap();
        assert_eq!(none, None);
        assert_eq!(v6, Some(0), "::1 in its /64 is key 0, a real key");
        assert_ne!(none, v6);
    }

    #[test]
    fn refusals_spend_no_budget() {
        let p = Policy {
            rate: Rate::parse("2/60"),
            global_rate: Rate::parse("3/60"),
            max_per_ip: 5,
            ..policy(&[])
        };
        let mut g = Gate::new(p, b"", Instant::now());
        let now = Instant::now();
        let a = Some("10.0.0.1:1".parse().unwrap());
        let b = Some("10.0.0.2:1".parse().unwrap());
        // The per-source limit refuses first and counts nothing.
        assert!(g.check(a, |_| 5, now) == Err(Refusal::PerIp));
        assert!(g.check(a, |_| 0, now).is_ok());
        assert!(g.check(a, |_| 0, now).is_ok());
        for _ in 0..10 {
            assert_eq!(g.check(a, |_| 0, now), Err(Refusal::Rate));
        }
        // A's refusals left the global window with 1 of 3 for B.
        assert!(g.check(b, |_| 0, now).is_ok());
        assert_eq!(g.check(b, |_| 0, now), Err(Refusal::GlobalRate));
    }

    #[test]
    fn rate_window() {
        let p = Policy {
            rate: Rate::parse("2/10"),
            ..Policy::default()
        };
        let t0 = Instant::now();
        let mut r = Rates::new(t0);
        assert_eq!(r.admit(&p, 1, t0), Ok(()));
        assert_eq!(r.admit(&p, 1, t0), Ok(()));
        assert_eq!(r.admit(&p, 1, t0), Err(Refusal::Rate));
        assert_eq!(r.admit(&p, 2, t0), Ok(()));
        let later = t0 + Duration::from_secs(9);
        assert_eq!(r.admit(&p, 1, later), Err(Refusal::Rate));
        let after = t0 + Duration::from_secs(10);
        assert_eq!(r.admit(&p, 1, after), Ok(()));
        // The table recycles the oldest window when full.
        for k in 100..100 + RATE_SLOTS as u128 {
            assert_eq!(r.admit(&p, k, after), Ok(()));
        }
        let g = Policy {
            global_rate: Rate::parse("3/1"),
            ..Policy::default()
        };
        let mut r = Rates::new(t0);
        for k in 0..3 {
            assert_eq!(r.admit(&g, k, t0), Ok(()));
        }
        assert_eq!(r.admit(&g, 9, t0), Err(Refusal::GlobalRate));
        assert_eq!(r.admit(&g, 9, t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn rate_parsing() {
        assert_eq!(
            Rate::parse("10/60"),
            Some(Rate {
                n: 10,
                per: Duration::from_secs(60)
            })
        );
        for bad in ["0/1", "1/0", "10", "/5", "5/", "a/b", "-1/5", "1000001/1"] {
            assert_eq!(Rate::parse(bad), None, "{bad}");
        }
    }
}
