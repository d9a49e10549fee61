//! Counters kept by the parent, and the one-line status that SIGUSR1 asks
//! for. Plain integers in a fixed struct: counting never allocates, and the
//! status line is formatted into the log's fixed storage.

use crate::admission::Refusal;
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
    }
}
