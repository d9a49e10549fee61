//! The one page the parent shares with every child, mapped before the first
//! fork: each child's last activity (so the parent can tell an idle session
//! from a busy one when it must make room at `--max-children`), and how many
//! log lines any process had to drop.
//!
//! Plain relaxed atomic stores and loads, no locks and no allocation: a child
//! writes only its own slot, the parent only reads them (and clears a slot
//! when it hands it to a new child). Times are milliseconds since a base
//! instant taken before the first fork, kept as wrapping `u32`: idleness is
//! a difference, correct up to 49 days, far past any session limit.

use crate::limits::MAX_CHILDREN;
use crate::sys::SetOnce;
use core::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Instant;

struct Board {
    /// `[0]`: log lines dropped; `[1 + slot]`: a child's last activity.
    words: &'static [AtomicU32],
    /// The instant all times are measured from (inherited by every child).
    base: Instant,
}

static BOARD: SetOnce<Board> = SetOnce::new();

/// Maps the page; at start-up, before any fork. Without it (mmap refused)
/// the server works on, only unable to tell idle children apart, so it
/// never evicts.
pub fn map() -> nix::Result<()> {
    let words = crate::sys::map_shared(1 + MAX_CHILDREN)?;
    let _ = BOARD.set(Board {
        words,
        base: Instant::now(),
    });
    Ok(())
}

/// Milliseconds since the base instant, wrapping. Seconds and millis apart:
/// a u128 division would pull a large routine into 32-bit ARM builds.
fn now_ms(b: &Board) -> u32 {
    let d = b.base.elapsed();
    (d.as_secs() as u32)
        .wrapping_mul(1000)
        .wrapping_add(d.subsec_millis())
}

/// Marks `slot` active now: a child when bytes move, the parent when it
/// hands the slot to a new child.
pub fn touch(slot: usize) {
    if let Some(b) = BOARD.get() {
        if let Some(w) = b.words.get(1 + slot) {
            w.store(now_ms(b), Relaxed);
        }
    }
}

/// How long `slot` has been idle, in milliseconds; `None` when unknown (no
/// shared page).
pub fn idle_ms(slot: usize) -> Option<u32> {
    let b = BOARD.get()?;
    let last = b.words.get(1 + slot)?.load(Relaxed);
    Some(now_ms(b).wrapping_sub(last))
}

/// Where dropped log lines are counted: the shared word, or (no page, as
/// with `--inetd`) this process's own.
fn dropped_word() -> &'static AtomicU32 {
    static OWN: AtomicU32 = AtomicU32::new(0);
    BOARD.get().map_or(&OWN, |b| &b.words[0])
}

/// One more log line that could not be written, in any process.
pub fn log_dropped() {
    dropped_word().fetch_add(1, Relaxed);
}

/// Log lines dropped so far by the parent and all children.
pub fn dropped_total() -> u32 {
    dropped_word().load(Relaxed)
}
