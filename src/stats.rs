//! Counters kept by the parent, and the one-line status that SIGUSR1 asks
//! for. Plain integers in a fixed struct: counting never allocates, and the
//! status line is formatted into the log's fixed storage.

use crate::admission::Refusal;
use crate::udp::NoReply;
use core::fmt;

#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    /// Connections accepted and handed to a child.
    pub accepted: u64,
    /// Children reaped that ended with status 0 (echo done, or the peer
    /// reset: the ways a client may leave).
    pub exited_ok: u64,
    /// Children reaped that exited with the error status (a session error;
    /// the two limits have their own counters below).
    pub exited_error: u64,
    /// Sessions ended by `--idle-timeout`.
    pub idle_timeout: u64,
    /// Sessions ended by `--max-session`.
    pub lifetime_end: u64,
    /// Children reaped that a signal ended.
    pub killed: u64,
    /// Of those, the ones the seccomp filter killed (SIGSYS).
    pub killed_sandbox: u64,
    /// Times the loop reached `--max-children` and stopped accepting (new
    /// clients then wait in the kernel backlog); once per episode, not per
    /// turn at the cap.
    pub cap_reached: u64,
    /// Connections refused by the access rules (`--allow`/`--deny`).
    pub refused_deny: u64,
    /// Connections refused by `--global-rate`.
    pub refused_global_rate: u64,
    /// Connections refused by `--rate` (per source).
    pub refused_rate: u64,
    /// Connections refused by `--max-per-ip`.
    pub refused_per_ip: u64,
    /// `fork` failures (the connection was closed).
    pub fork_failed: u64,
    /// Connections accepted and closed at once because the parent was out of
    /// descriptors (EMFILE/ENFILE).
    pub dropped_no_fd: u64,
    /// `accept` errors the loop retried (aborted connections, network errors
    /// passed on by the kernel).
    pub accept_retried: u64,
    /// `accept` errors that paused the listeners (EMFILE/ENFILE without a
    /// reserve, ENOBUFS, ENOMEM, anything unexpected).
    pub accept_paused: u64,
    /// Sessions a stop signal ended cleanly (shutdown, or eviction).
    pub stopped: u64,
    /// Idle sessions asked to end to make room at `--max-children`.
    pub evicted: u64,
    /// The UDP echo's counters, printed last, and only with UDP sockets
    /// (so the line of a TCP-only server is what it always was).
    pub udp: UdpStats,
}

impl Stats {
    /// One more refusal, under its reason.
    pub fn refused(&mut self, why: Refusal) {
        *match why {
            Refusal::Deny => &mut self.refused_deny,
            Refusal::GlobalRate => &mut self.refused_global_rate,
            Refusal::Rate => &mut self.refused_rate,
            Refusal::PerIp => &mut self.refused_per_ip,
        } += 1;
    }
}

/// The status line: `active=` is the live children, the rest are totals
/// since start; `log_dropped=` counts the log lines any process could not
/// write.
pub struct Status<'a> {
    pub active: usize,
    pub stats: &'a Stats,
    pub log_dropped: u32,
}

impl fmt::Display for Status<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.stats;
        write!(
            f,
            "status: active={} accepted={} exited_ok={} exited_error={} idle_timeout={} lifetime_end={} killed={} fork_failed={} dropped_no_fd={} accept_retried={} accept_paused={} cap_reached={} refused_deny={} refused_global_rate={} refused_rate={} refused_per_ip={} stopped={} evicted={} log_dropped={} killed_sandbox={}",
            self.active,
            s.accepted,
            s.exited_ok,
            s.exited_error,
            s.idle_timeout,
            s.lifetime_end,
            s.killed,
            s.fork_failed,
            s.dropped_no_fd,
            s.accept_retried,
            s.accept_paused,
            s.cap_reached,
            s.refused_deny,
            s.refused_global_rate,
            s.refused_rate,
            s.refused_per_ip,
            s.stopped,
            s.evicted,
            self.log_dropped,
            s.killed_sandbox
        )?;
        match s.udp.enabled {
            true => write!(f, " {}", s.udp),
            false => Ok(()),
        }
    }
}

/// The UDP echo's counters: what was answered, and each reason a datagram
/// was not.
#[derive(Default, Debug, Clone, Copy)]
pub struct UdpStats {
    /// Whether there are UDP sockets at all (not a counter).
    pub enabled: bool,
    pub echoed: u64,
    /// Bytes echoed (the payloads, without headers).
    pub bytes: u64,
    /// Longer than `--udp-buffer`: dropped, not echoed cut.
    pub too_long: u64,
    /// From a port in `--udp-refuse-ports`.
    pub refused_port: u64,
    /// From source port 0.
    pub refused_port0: u64,
    /// From a broadcast, multicast or reserved address.
    pub refused_source: u64,
    /// Sent to a broadcast or multicast address.
    pub refused_dest: u64,
    /// The access rules, `--global-rate`, `--rate` (as for TCP).
    pub refused_deny: u64,
    pub refused_global_rate: u64,
    pub refused_rate: u64,
    /// `recvmsg`/`sendmsg` errors (a full send buffer, no route).
    pub failed: u64,
}

impl UdpStats {
    pub fn no_reply(&mut self, why: NoReply) {
        *match why {
            NoReply::TooLong => &mut self.too_long,
            NoReply::ServicePort => &mut self.refused_port,
            NoReply::PortZero => &mut self.refused_port0,
            NoReply::BadSource => &mut self.refused_source,
            NoReply::NotUnicast => &mut self.refused_dest,
            NoReply::Refused(Refusal::Deny) => &mut self.refused_deny,
            NoReply::Refused(Refusal::GlobalRate) => &mut self.refused_global_rate,
            // --max-per-ip counts live children: a datagram leaves none.
            NoReply::Refused(Refusal::Rate | Refusal::PerIp) => &mut self.refused_rate,
            NoReply::SendFailed(_) => &mut self.failed,
        } += 1;
    }
}

impl fmt::Display for UdpStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "udp_echoed={} udp_bytes={} udp_too_long={} udp_refused_port={} udp_refused_port0={} udp_refused_source={} udp_refused_dest={} udp_refused_deny={} udp_refused_global_rate={} udp_refused_rate={} udp_failed={}",
            self.echoed,
            self.bytes,
            self.too_long,
            self.refused_port,
            self.refused_port0,
            self.refused_source,
            self.refused_dest,
            self.refused_deny,
            self.refused_global_rate,
            self.refused_rate,
            self.failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_names_every_counter() {
        let stats = Stats {
            accepted: 7,
            exited_ok: 5,
            exited_error: 1,
            killed: 1,
            ..Stats::default()
        };
        assert_eq!(
            Status {
                active: 0,
                stats: &stats,
                log_dropped: 2
            }
            .to_string(),
            "status: active=0 accepted=7 exited_ok=5 exited_error=1 idle_timeout=0 lifetime_end=0 killed=1 fork_failed=0 dropped_no_fd=0 accept_retried=0 accept_paused=0 cap_reached=0 refused_deny=0 refused_global_rate=0 refused_rate=0 refused_per_ip=0 stopped=0 evicted=0 log_dropped=2 killed_sandbox=0"
        );
        let mut stats = stats;
        stats.udp.enabled = true;
        stats.udp.no_reply(NoReply::PortZero);
        let line = Status {
            active: 0,
            stats: &stats,
            log_dropped: 0,
        }
        .to_string();
        assert!(
            line.ends_with(" killed_sandbox=0 udp_echoed=0 udp_bytes=0 udp_too_long=0 udp_refused_port=0 udp_refused_port0=1 udp_refused_source=0 udp_refused_dest=0 udp_refused_deny=0 udp_refused_global_rate=0 udp_refused_rate=0 udp_failed=0"),
            "{line}"
        );
    }
}
