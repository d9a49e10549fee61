//! Test-only (`--features alloc-count`): a global allocator that counts
//! allocations, so the tests can prove that the child path and the parent's
//! steady-state loop never touch the heap.
//!
//! The counter is a plain static: after `fork` the child has its own copy, so
//! "allocations since fork" is just the child's count minus the count it
//! inherited. Never enabled in a release build: it costs bytes and a branch
//! per allocation, and proves nothing on a board.

use core::sync::atomic::{AtomicUsize, Ordering};
use std::alloc::{GlobalAlloc, Layout, System};

pub struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Allocations (including reallocations) so far in this process.
pub fn count() -> usize {
    ALLOCS.load(Ordering::Relaxed)
}
