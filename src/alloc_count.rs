//! Test-only (`--features alloc-count`): counts allocations, so the tests can
//! prove that the child path and the parent's steady-state loop never touch
//! the heap. The allocator that calls [`bump`] is `sys::CountingAlloc` (it
//! needs `unsafe impl`, which lives in `sys`).
//!
//! The counter is a plain static: after `fork` the child has its own copy, so
//! "allocations since fork" is just the child's count minus the count it
//! inherited. Never enabled in a release build: it costs bytes and a branch
//! per allocation, and proves nothing on a board.

use core::sync::atomic::{AtomicUsize, Ordering};

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

/// One more allocation (or reallocation).
pub fn bump() {
    ALLOCS.fetch_add(1, Ordering::Relaxed);
}

/// Allocations (including reallocations) so far in this process.
pub fn count() -> usize {
    ALLOCS.load(Ordering::Relaxed)
}

/// Logs the count since `base`: the tests read these lines.
pub fn report(who: &str, base: usize) {
    crate::log!(
        crate::log::Level::Error,
        "alloc-check: {who} made {} allocations after {}",
        count() - base,
        if who == "child" { "fork" } else { "start-up" }
    );
}
