//! A global allocator that counts, for the tests that measure allocations and live heap. A
//! test binary installs it with `#[global_allocator]`; it then counts the whole process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

/// Forwards to the system allocator and counts calls and live bytes.
pub(crate) struct Counting;

/// Allocations (and reallocations) so far.
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// Heap bytes allocated and not yet freed.
static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Heap bytes ever allocated (a reallocation counts its new size).
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

/// Allocations (and reallocations) made so far by the process.
pub(crate) fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Heap bytes the process holds now.
pub(crate) fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Heap bytes the process allocated so far (a reallocation counts its new size, since it may
/// move what it holds).
pub(crate) fn allocated() -> usize {
    ALLOCATED.load(Ordering::Relaxed)
}

// SAFETY: forwards to the system allocator unchanged; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
