//! The global allocator of the `sluice` binary: the system's (glibc's) malloc, with a small
//! per-thread cache of freed mid-sized blocks in front of it.
//!
//! glibc serves blocks up to 1,032 bytes from its per-thread cache in a few dozen instructions,
//! but a larger one goes through its bins: about 300 instructions to allocate and 150 to free.
//! Every request allocates two such blocks, the boxed futures of its stream and of its
//! forwarding (a few KiB each, the same size every time). This cache keeps, per thread, up to
//! [`KEEP`] freed blocks of each of [`SIZES`] exact sizes between 1 and 8 KiB (the sizes most
//! recently freed) and hands them out again for that exact size; everything else goes to the
//! system allocator unchanged. Blocks keep their exact size, so memory use is what glibc's
//! would be, plus what the caches hold.
//!
//! At most `KEEP` × `SIZES` × 8 KiB stays cached per thread. [`flush_this_thread`] gives a
//! thread's blocks back: `sys::trim_heap` calls it, so a thread that loads configuration or
//! drops a descriptor pool and then trims does not keep blocks it never asks for again, and so
//! does a runtime thread that stops.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;

/// Blocks kept per size and thread.
pub const KEEP: u32 = 32;

/// Sizes cached at once per thread.
pub const SIZES: usize = 4;

/// The allocator: `System` with the per-thread cache.
pub struct Cached;

/// The free blocks of one size, linked through their first word.
struct Free {
    /// The blocks' size; a list that is empty may be taken over by another size.
    size: Cell<usize>,
    head: Cell<*mut u8>,
    len: Cell<u32>,
}

impl Free {
    const fn new() -> Free {
        Free {
            size: Cell::new(0),
            head: Cell::new(ptr::null_mut()),
            len: Cell::new(0),
        }
    }
}

thread_local! {
    // No destructor and a constant initializer: usable at any point of a thread's life,
    // teardown included, without registering anything.
    static CACHE: [Free; SIZES] = const { [Free::new(), Free::new(), Free::new(), Free::new()] };
    /// The list a new size takes over when every list holds blocks (round robin).
    static VICTIM: Cell<usize> = const { Cell::new(0) };
}

/// Gives a list's blocks back to the system allocator.
fn release(free: &Free) {
    let mut block = free.head.replace(ptr::null_mut());
    while !block.is_null() {
        // SAFETY: every block on the list was put there by `keep` with the next block's
        // address in its first word, and was allocated from the system with the list's size
        // and an alignment of at most 16.
        unsafe {
            let next = block.cast::<*mut u8>().read();
            System.dealloc(
                block,
                Layout::from_size_align_unchecked(free.size.get(), 16),
            );
            block = next;
        }
    }
    free.len.set(0);
}

/// Gives every block this thread keeps back to the system allocator.
pub fn flush_this_thread() {
    let _ = CACHE.try_with(|cache| cache.iter().for_each(release));
}

/// Whether blocks of this layout are cached: larger than glibc's own per-thread cache takes,
/// at most 8 KiB, and no more aligned than malloc's 16 bytes.
#[inline]
fn cached(layout: Layout) -> bool {
    (1025..=8192).contains(&layout.size()) && layout.align() <= 16
}

/// A cached block of exactly `size` bytes, if this thread has one. Not inlined: the
/// allocator's entry points are inlined at every allocation in the program, and this body at
/// each would add megabytes of code (and of resident memory).
#[inline(never)]
fn take(size: usize) -> Option<*mut u8> {
    CACHE
        .try_with(|cache| {
            let free = cache
                .iter()
                .find(|f| f.size.get() == size && f.len.get() > 0)?;
            let head = free.head.get();
            // SAFETY: a list with blocks holds the next block's address in each block's first
            // word (see `keep`).
            free.head.set(unsafe { head.cast::<*mut u8>().read() });
            free.len.set(free.len.get() - 1);
            Some(head)
        })
        .ok()
        .flatten()
}

/// Keeps a freed block of `size` bytes; false when this thread's list for that size is full.
/// A size with no list takes over an empty one, else the next in turn, whose blocks go back
/// to the system: the sizes freed lately keep their lists. Not inlined (see
/// `take`).
#[inline(never)]
fn keep(size: usize, block: *mut u8) -> bool {
    CACHE
        .try_with(|cache| {
            let free = match cache.iter().find(|f| f.size.get() == size) {
                Some(f) => f,
                None => {
                    let f = match cache.iter().find(|f| f.len.get() == 0) {
                        Some(f) => f,
                        None => {
                            let v = VICTIM.try_with(|v| v.replace((v.get() + 1) % SIZES));
                            let f = &cache[v.unwrap_or(0)];
                            release(f);
                            f
                        }
                    };
                    f.size.set(size);
                    f
                }
            };
            if free.len.get() >= KEEP {
                return false;
            }
            // SAFETY: the block is more than 1 KiB, 16-aligned and no longer in use: its
            // first word holds the list's link.
            unsafe { block.cast::<*mut u8>().write(free.head.get()) };
            free.head.set(block);
            free.len.set(free.len.get() + 1);
            true
        })
        .unwrap_or(false)
}

// Each entry point is one call, not inlined at the program's allocation sites (that cost
// half a megabyte of code).
//
// SAFETY: every block handed out is the system allocator's, allocated for a layout of the
// same size and an alignment it satisfies (malloc aligns to 16): either just now, or earlier
// for a caller that freed it into this thread's list of that exact size. A block is on at most
// one list and is never handed out while on it; the system frees every block with the size
// it was allocated with.
unsafe impl GlobalAlloc for Cached {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if cached(layout) {
            if let Some(block) = take(layout.size()) {
                return block;
            }
        }
        System.alloc(layout)
    }

    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        System.alloc_zeroed(layout)
    }

    #[inline(never)]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if !(cached(layout) && keep(layout.size(), block)) {
            System.dealloc(block, layout);
        }
    }

    #[inline(never)]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        System.realloc(block, layout, new_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    fn lens() -> Vec<(usize, u32)> {
        CACHE.with(|c| {
            c.iter()
                .filter(|f| f.len.get() > 0)
                .map(|f| (f.size.get(), f.len.get()))
                .collect()
        })
    }

    #[test]
    fn only_mid_sizes_are_cached() {
        assert!(!cached(layout(1024, 8)));
        assert!(cached(layout(1025, 8)));
        assert!(cached(layout(8192, 16)));
        assert!(!cached(layout(8193, 8)));
        assert!(!cached(layout(4096, 32)));
    }

    #[test]
    fn a_freed_block_is_handed_out_again_for_its_size_and_the_cache_is_bounded() {
        let a = Cached;
        let l = layout(3000, 8);
        // SAFETY: blocks are used within their layouts and freed once with them.
        unsafe {
            let p = a.alloc(l);
            p.write_bytes(0xab, l.size());
            a.dealloc(p, l);
            assert_eq!(lens(), vec![(3000, 1)]);
            // Another size does not get it...
            let other = a.alloc(layout(3001, 8));
            assert_ne!(other, p);
            a.dealloc(other, layout(3001, 8));
            // ...the same size does.
            let q = a.alloc(l);
            assert_eq!(p, q);
            a.dealloc(q, l);
            // Fill past the bound: what does not fit goes back to the system.
            let many: Vec<*mut u8> = (0..KEEP + 8).map(|_| a.alloc(l)).collect();
            for &m in &many {
                a.dealloc(m, l);
            }
            assert!(lens().contains(&(3000, KEEP)));
            // Every list taken by another size: a fifth size takes one over in turn (the
            // first: 3000's blocks go back), a sixth the next.
            for size in [4000, 5000, 6000, 7000] {
                let b = a.alloc(layout(size, 8));
                a.dealloc(b, layout(size, 8));
            }
            let mut now = lens();
            now.sort();
            assert_eq!(now, vec![(4000, 1), (5000, 1), (6000, 1), (7000, 1)]);
        }
        flush_this_thread();
        assert_eq!(lens(), vec![]);
        CACHE.with(|c| assert!(c.iter().all(|f| f.head.get().is_null())));
    }

    #[test]
    fn blocks_freed_on_other_threads_are_safe_to_reuse() {
        // Allocate on one thread, free on another, reuse there: every block is written whole
        // and checked, so an overlap between two live blocks would show.
        let a = &Cached;
        let l = layout(6000, 16);
        let blocks: Vec<usize> = (0..64)
            // SAFETY: freed on the other thread with the same layout.
            .map(|_| unsafe { a.alloc(l) } as usize)
            .collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: each block is freed once; the live ones are distinct and in bounds.
                unsafe {
                    for b in blocks {
                        a.dealloc(b as *mut u8, l);
                    }
                    let live: Vec<*mut u8> = (0..64).map(|_| a.alloc(l)).collect();
                    for (i, p) in live.iter().enumerate() {
                        p.write_bytes(i as u8, l.size());
                    }
                    for (i, p) in live.iter().enumerate() {
                        let s = std::slice::from_raw_parts(*p, l.size());
                        assert!(s.iter().all(|b| *b == i as u8), "block {i}");
                    }
                    for p in live {
                        a.dealloc(p, l);
                    }
                }
                flush_this_thread();
            });
        });
    }
}
