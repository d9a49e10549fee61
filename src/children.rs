//! The child table: who is alive, which source each serves, its slot in the
//! shared activity table, and the reaper.
//!
//! A fixed table (capacity [`MAX_CHILDREN`] ≥ `--max-children`). Each entry
//! carries the key of its source, which is all `--max-per-ip` needs: the
//! count per source is read off the table, so a slot is given back exactly
//! when its child is reaped, whatever ended it — a crashed or SIGKILLed child
//! cannot leak one. Each entry also owns a slot of the shared page where the
//! child posts its last activity; at the cap the idlest child can then be
//! asked to end (SIGTERM: it finishes cleanly) to make room for a newcomer,
//! without ever touching a session that is moving bytes.

use crate::limits::MAX_CHILDREN;
use crate::log::Level;
use crate::session::End;
use crate::stats::Stats;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::time::Duration;

struct Child {
    pid: Pid,
    /// The source's key (`None`: unknown peer, no per-source limit).
    key: Option<u128>,
    /// Its slot in the shared activity table.
    slot: u16,
    /// Asked to end to make room: no longer counts against the cap.
    evicted: bool,
}

/// Bits of the slot map: one per possible child.
const SLOT_WORDS: usize = MAX_CHILDREN.div_ceil(32);

pub struct Children {
    live: heapless::Vec<Child, MAX_CHILDREN>,
    /// Which activity slots are taken.
    slots: [u32; SLOT_WORDS],
    /// Children asked to end to make room, still alive.
    evicted: usize,
    /// The table holds every child this process has (see
    /// [`Children::check_strangers`]): an empty table means nothing to reap.
    exact: bool,
}

impl Default for Children {
    fn default() -> Self {
        Children {
            live: heapless::Vec::new(),
            slots: [0; SLOT_WORDS],
            evicted: 0,
            exact: false,
        }
    }
}

impl Children {
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Children that count against `--max-children` (not the ones already
    /// asked to end).
    pub fn active(&self) -> usize {
        self.live.len() - self.evicted
    }

    /// Whether the table can take one more child.
    pub fn has_room(&self) -> bool {
        !self.live.is_full()
    }

    /// A free activity slot for the next child (there is one whenever the
    /// table has room), marked active now.
    pub fn free_slot(&self) -> usize {
        let (w, word) = (self.slots.iter().enumerate())
            .find(|(_, w)| **w != u32::MAX)
            .map_or((0, 0), |(i, w)| (i, *w));
        let slot = w * 32 + word.trailing_ones() as usize;
        crate::shared::touch(slot);
        slot
    }

    /// Files a new child. Callers fork only while [`Children::has_room`].
    pub fn add(&mut self, pid: Pid, key: Option<u128>, slot: usize) {
        let child = Child {
            pid,
            key,
            slot: slot as u16,
            evicted: false,
        };
        if self.live.push(child).is_ok() {
            self.slots[slot / 32] |= 1 << (slot % 32);
        }
    }

    /// Live connections from the source with this key.
    pub fn live_from(&self, key: u128) -> u32 {
        self.live.iter().filter(|c| c.key == Some(key)).count() as u32
    }

    /// The child idle longest, if it has been idle at least `min`: the one to
    /// end for a newcomer. `Err(wait)`: none yet, and the idlest reaches
    /// `min` in `wait` at the soonest (a busy one may never).
    pub fn idlest(&self, min: Duration) -> Result<usize, Option<Duration>> {
        let min_ms = min.as_secs().saturating_mul(1000).min(u32::MAX.into()) as u32;
        let idlest = (self.live.iter().enumerate())
            .filter(|(_, c)| !c.evicted)
            .filter_map(|(i, c)| Some((i, crate::shared::idle_ms(c.slot.into())?)))
            .max_by_key(|&(_, idle)| idle);
        match idlest {
            Some((i, idle)) if idle >= min_ms => Ok(i),
            Some((_, idle)) => Err(Some(Duration::from_millis((min_ms - idle).into()))),
            None => Err(None),
        }
    }

    /// Asks child `i` to end (SIGTERM: it echoes what it has, sends FIN,
    /// drains and exits) and stops counting it against the cap.
    pub fn evict(&mut self, i: usize) -> Pid {
        let c = &mut self.live[i];
        let _ = kill(c.pid, Signal::SIGTERM);
        if !c.evicted {
            c.evicted = true;
            self.evicted += 1;
        }
        c.pid
    }

    /// Once, before the loop forks anything: is this process free of
    /// children it did not fork (`ECHILD`)? Then only the loop ever makes
    /// one, every child is in the table, and [`Children::reap`] stops as
    /// soon as the table is empty instead of asking `waitpid` once more to
    /// hear "none left": a system call saved per connection at c=1. A
    /// process started with children of its own (`sh -c 'job & exec
    /// forkecho'`) keeps asking until `waitpid` says none is left, so those
    /// are reaped too. One `wait4`, at start-up.
    pub fn check_strangers(&mut self) {
        self.exact = matches!(
            waitpid(None, Some(WaitPidFlag::WNOHANG)),
            Err(Errno::ECHILD)
        );
    }

    /// `waitpid(-1, WNOHANG)` until no exited child is left (SIGCHLDs
    /// coalesce: one wait per signal would leak zombies), counting each end.
    pub fn reap(&mut self, stats: &mut Stats) {
        while !(self.exact && self.live.is_empty()) {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.forget(pid);
                    match End::from_status(code) {
                        End::Eof | End::Reset => stats.exited_ok += 1,
                        End::Idle => stats.idle_timeout += 1,
                        End::Lifetime => stats.lifetime_end += 1,
                        End::Stopped => stats.stopped += 1,
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
                    } else {
                        crate::log!(Level::Info, "child {pid} killed by {}", sig.as_str());
                    }
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => break, // ECHILD: no children at all.
            }
        }
    }

    fn forget(&mut self, pid: Pid) {
        if let Some(i) = self.live.iter().position(|c| c.pid == pid) {
            let c = self.live.swap_remove(i);
            self.slots[usize::from(c.slot) / 32] &= !(1 << (c.slot % 32));
            if c.evicted {
                self.evicted -= 1;
            }
        }
    }

    /// Sends `sig` to every live child.
    pub fn signal_all(&self, sig: Signal) {
        for c in &self.live {
            let _ = kill(c.pid, sig);
        }
    }

    /// SIGKILL to every child left, then blocking waits: SIGKILL cannot be
    /// caught, so each one exits. Returns how many there were.
    pub fn kill_all(&mut self, stats: &mut Stats) -> usize {
        let n = self.live.len();
        self.signal_all(Signal::SIGKILL);
        while !self.live.is_empty() {
            match waitpid(None, None) {
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        self.forget(pid);
                        stats.killed += 1;
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(_) => self.live.clear(),
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_counts_follow_the_table() {
        let mut t = Children::default();
        let (a, b) = (Pid::from_raw(10), Pid::from_raw(11));
        t.add(a, Some(1), t.free_slot());
        t.add(b, Some(1), t.free_slot());
        assert_eq!(t.live_from(1), 2, "N live from one source");
        t.add(Pid::from_raw(12), Some(2), t.free_slot());
        assert_eq!(t.live_from(2), 1, "another source is unaffected");
        t.forget(a);
        assert_eq!(t.live_from(1), 1, "a reaped child gives its slot back");
        t.forget(b);
        t.forget(Pid::from_raw(12));
        assert!(t.is_empty(), "no slot leaks");
        assert_eq!(t.live_from(1), 0);
    }

    #[test]
    fn activity_slots_are_reused_lowest_first() {
        let mut t = Children::default();
        for pid in 1..=40 {
            let slot = t.free_slot();
            assert_eq!(slot, pid as usize - 1);
            t.add(Pid::from_raw(pid), None, slot);
        }
        t.forget(Pid::from_raw(5));
        t.forget(Pid::from_raw(33));
        assert_eq!(t.free_slot(), 4);
        t.add(Pid::from_raw(99), None, 4);
        assert_eq!(t.free_slot(), 32);
    }
}
