//! The guest runtime (wasm32 with the `guest-runtime` feature only): a bump
//! allocator over `memory.grow` and a panic handler that traps.
//!
//! Why a bump allocator: every merge starts from the module's initial
//! state (a fresh instance, or a kept one put back), so nothing needs to
//! be freed, and bumping is the fastest and smallest allocator there is.
//! The host's memory cap bounds it.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

const PAGE_BYTES: usize = 65536;
/// Grow by at least this many pages at a time: each `memory.grow` is a call
/// into the host.
const GROW_PAGES_MIN: usize = 4;

unsafe extern "C" {
    /// First free byte after the stack and the data (set by the linker; a
    /// symbol, not an import).
    static __heap_base: u8;
}

struct Bump {
    /// Next free byte and end of the grown region (0 until first use).
    state: UnsafeCell<(usize, usize)>,
}

// SAFETY: wasm32-unknown-unknown without threads is single-threaded.
unsafe impl Sync for Bump {}

#[global_allocator]
static ALLOCATOR: Bump = Bump {
    state: UnsafeCell::new((0, 0)),
};

impl Bump {
    /// Grow memory so that `[.., end)` is available; false if the host says no.
    fn ensure(end_now: &mut usize, need_end: usize) -> bool {
        if need_end <= *end_now {
            return true;
        }
        let needed = (need_end - *end_now).div_ceil(PAGE_BYTES);
        let mut pages = needed.max(GROW_PAGES_MIN);
        if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
            // Near the cap: try for exactly what is needed.
            pages = needed;
            if pages == GROW_PAGES_MIN || core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
                return false;
            }
        }
        *end_now += pages * PAGE_BYTES;
        true
    }
}

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: single-threaded (see `Sync` above); no reentrancy.
        let (next, end) = unsafe { &mut *self.state.get() };
        if *end == 0 {
            // Start at `__heap_base`, which the linker places after the
            // stack and the data: the rest of the initial memory is free,
            // so small merges never call `memory.grow` (a host call).
            *end = core::arch::wasm32::memory_size(0) * PAGE_BYTES;
            // Taking the address of the linker symbol reads nothing.
            let heap_base = core::ptr::addr_of!(__heap_base) as usize;
            *next = if heap_base > 0 && heap_base <= *end {
                heap_base
            } else {
                *end
            };
        }
        let start = match next.checked_next_multiple_of(layout.align()) {
            Some(s) => s,
            None => return core::ptr::null_mut(),
        };
        let Some(new_next) = start.checked_add(layout.size()) else {
            return core::ptr::null_mut();
        };
        if !Self::ensure(end, new_next) {
            return core::ptr::null_mut();
        }
        *next = new_next;
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: single-threaded; give back only the most recent block.
        let (next, _) = unsafe { &mut *self.state.get() };
        if ptr as usize + layout.size() == *next {
            *next = ptr as usize;
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: single-threaded; the last block can grow in place.
        let (next, end) = unsafe { &mut *self.state.get() };
        if ptr as usize + layout.size() == *next {
            let Some(new_next) = (ptr as usize).checked_add(new_size) else {
                return core::ptr::null_mut();
            };
            if Self::ensure(end, new_next) {
                *next = new_next;
                return ptr;
            }
            return core::ptr::null_mut();
        }
        // SAFETY: `new_size` and `layout.align()` form a valid layout per
        // the `GlobalAlloc::realloc` contract.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for `alloc`.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and disjoint.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        }
        new
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}
