//! The child table: who is alive, which source each serves, and the reaper.
//!
//! A fixed table (capacity [`MAX_CHILDREN`] ≥ `--max-children`, so an insert
//! after the cap check cannot fail). Each entry carries the key of its
//! source, which is all `--max-per-ip` needs: the count per source is read off
//! the table, so a slot is given back exactly when its child is reaped,
//! whatever ended it — a crashed or SIGKILLed child cannot leak one.

use crate::limits::MAX_CHILDREN;
use crate::log::Level;
use crate::session::End;
use crate::stats::Stats;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

#[derive(Default)]
pub struct Children {
    /// Live children: pid and the key of their source address.
    live: heapless::Vec<(Pid, u128), MAX_CHILDREN>,
}

impl Children {
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Files a new child. The caller forks only below `--max-children`
    /// (≤ the capacity), so there is always room.
    pub fn add(&mut self, pid: Pid, key: u128) {
        let _ = self.live.push((pid, key));
    }

    /// Live connections from the source with this key.
    pub fn live_from(&self, key: u128) -> u32 {
        self.live.iter().filter(|c| c.1 == key).count() as u32
    }

    /// `waitpid(-1, WNOHANG)` until no exited child is left (SIGCHLDs
    /// coalesce: one wait per signal would leak zombies), counting each end.
    /// `quiet` is the signal whose deaths are expected (SIGTERM while shutting
    /// down) and not logged.
    pub fn reap(&mut self, stats: &mut Stats, quiet: Option<Signal>) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.forget(pid);
                    match End::from_status(code) {
                        End::Eof | End::Reset => stats.exited_ok += 1,
                        End::Idle => stats.idle_timeout += 1,
                        End::Lifetime => stats.lifetime_end += 1,
                        End::Error(_) => {
                            stats.exited_error += 1;
                            crate::log!(Level::Info, "child {pid} exited with status {code}");
                        }
                    }
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.forget(pid);
                    stats.killed += 1;
                    if sig == Signal::SIGSYS {
                        // The seccomp filter kills with SIGSYS: a gap in its
                        // list, or a session doing what it never should.
                        stats.killed_sandbox += 1;
                        crate::log!(
                            Level::Error,
                            "child {pid} killed by the sandbox (SIGSYS): a forbidden system call"
                        );
                    } else if quiet != Some(sig) {
                        crate::log!(Level::Info, "child {pid} killed by {}", sig.as_str());
                    }
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => break, // ECHILD: no children at all.
            }
        }
    }

    fn forget(&mut self, pid: Pid) {
        if let Some(i) = self.live.iter().position(|c| c.0 == pid) {
            self.live.swap_remove(i);
        }
    }

    /// Sends `sig` to every live child.
    pub fn signal_all(&self, sig: Signal) {
        for &(pid, _) in &self.live {
            let _ = kill(pid, sig);
        }
    }

    /// SIGKILL to every child left, then blocking waits: SIGKILL cannot be
    /// caught, so each one exits.
    pub fn kill_all(&mut self) {
        self.signal_all(Signal::SIGKILL);
        while !self.live.is_empty() {
            match waitpid(None, None) {
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        self.forget(pid);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(_) => self.live.clear(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_counts_follow_the_table() {
        let mut t = Children::default();
        let (a, b) = (Pid::from_raw(10), Pid::from_raw(11));
        t.add(a, 1);
        t.add(b, 1);
        assert_eq!(t.live_from(1), 2, "N live from one source");
        t.add(Pid::from_raw(12), 2);
        assert_eq!(t.live_from(2), 1, "another source is unaffected");
        t.forget(a);
        assert_eq!(t.live_from(1), 1, "a reaped child gives its slot back");
        t.forget(b);
        t.forget(Pid::from_raw(12));
        assert!(t.is_empty(), "no slot leaks");
        assert_eq!(t.live_from(1), 0);
    }
}
