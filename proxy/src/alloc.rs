//! The global allocator of the `sluice` binary: the system's (glibc's) malloc, with a small
//! per-thread cache of mid-sized blocks in front of it.
//!
//! glibc serves blocks up to 1,032 bytes from its per-thread cache in a few dozen instructions,
//! but a larger one goes through its bins: about 300 instructions to allocate and 150 to free.
//! Every request allocates two such blocks, the boxed futures of its stream and of its
//! forwarding (2–8 KiB each, the same sizes each time), so half of the allocator's cost per
//! request was those two. This cache keeps up to [`KEEP`] freed blocks of each of three size
//! classes (2, 4 and 8 KiB) per thread and hands them out again; everything else goes to the
//! system allocator unchanged. Blocks are allocated at their class's full size, so any request
//! in the class can take any cached block.
//!
//! At most `KEEP` × 14 KiB stays cached per thread; blocks left in a thread's cache when it
//! exits are not returned (the proxy's threads live as long as the process).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;

/// Blocks kept per size class and thread.
pub const KEEP: u32 = 32;

/// The classes' sizes; requests up to 1,024 bytes are left to glibc's own cache.
const CLASSES: [usize; 3] = [2048, 4096, 8192];

/// The allocator: `System` with the per-thread cache.
pub struct Cached;

/// One class's free blocks, linked through their first word.
struct Free {
    head: Cell<*mut u8>,
    len: Cell<u32>,
}

impl Free {
    const fn new() -> Free {
        Free {
            head: Cell::new(ptr::null_mut()),
            len: Cell::new(0),
        }
    }
}

thread_local! {
    // No destructor and a constant initializer: usable at any point of a thread's life,
    // teardown included, without registering anything.
    static CACHE: [Free; 3] = const { [Free::new(), Free::new(), Free::new()] };
}

/// The class of a layout, if it has one.
#[inline]
fn class(layout: Layout) -> Option<usize> {
    if layout.align() > 16 || layout.size() <= 1024 || layout.size() > CLASSES[2] {
        return None;
    }
    Some(match layout.size() {
        1025..=2048 => 0,
        2049..=4096 => 1,
        _ => 2,
    })
}

/// The layout a block of class `c` is allocated with from the system.
#[inline]
fn class_layout(c: usize) -> Layout {
    // SAFETY: the sizes are non-zero multiples of 16, far below isize::MAX.
    unsafe { Layout::from_size_align_unchecked(CLASSES[c], 16) }
}

/// A cached block of class `c`, if this thread has one.
#[inline]
fn take(c: usize) -> Option<*mut u8> {
    CACHE
        .try_with(|cache| {
            let free = &cache[c];
            let head = free.head.get();
            if head.is_null() {
                return None;
            }
            // SAFETY: every block on the list was put there by `keep` with the next block's
            // address in its first word; it is at least 2 KiB and 16-aligned.
            free.head.set(unsafe { head.cast::<*mut u8>().read() });
            free.len.set(free.len.get() - 1);
            Some(head)
        })
        .ok()
        .flatten()
}

/// Keeps a freed block of class `c`; false when the cache is full.
#[inline]
fn keep(c: usize, block: *mut u8) -> bool {
    CACHE
        .try_with(|cache| {
            let free = &cache[c];
            if free.len.get() >= KEEP {
                return false;
            }
            // SAFETY: the block is at least 2 KiB, 16-aligned and no longer in use: its first
            // word holds the list's link.
            unsafe { block.cast::<*mut u8>().write(free.head.get()) };
            free.head.set(block);
            free.len.set(free.len.get() + 1);
            true
        })
        .unwrap_or(false)
}

// SAFETY: every block handed out is either the system allocator's, for the caller's layout,
// or a block of the layout's class (at least as large, 16-aligned) allocated from the system
// at the class's layout and freed back to it at that layout; a block is on at most one free
// list and is never handed out while on it.
unsafe impl GlobalAlloc for Cached {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class(layout) {
            Some(c) => take(c).unwrap_or_else(|| System.alloc(class_layout(c))),
            None => System.alloc(layout),
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class(layout) {
            Some(_) => {
                let p = self.alloc(layout);
                if !p.is_null() {
                    ptr::write_bytes(p, 0, layout.size());
                }
                p
            }
            None => System.alloc_zeroed(layout),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class(layout) {
            Some(c) => {
                if !keep(c, block) {
                    System.dealloc(block, class_layout(c));
                }
            }
            None => System.dealloc(block, layout),
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align_unchecked(new_size, layout.align());
        match (class(layout), class(new)) {
            (None, None) => System.realloc(block, layout, new_size),
            // Within one class the block already has room.
            (Some(a), Some(b)) if a == b => block,
            _ => {
                let p = self.alloc(new);
                if !p.is_null() {
                    ptr::copy_nonoverlapping(block, p, layout.size().min(new_size));
                    self.dealloc(block, layout);
                }
                p
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn classes_cover_mid_sizes_only() {
        assert_eq!(class(layout(1024, 8)), None);
        assert_eq!(class(layout(1025, 8)), Some(0));
        assert_eq!(class(layout(2048, 16)), Some(0));
        assert_eq!(class(layout(2049, 8)), Some(1));
        assert_eq!(class(layout(8192, 8)), Some(2));
        assert_eq!(class(layout(8193, 8)), None);
        assert_eq!(class(layout(4096, 32)), None);
    }

    #[test]
    fn a_freed_block_is_handed_out_again_and_the_cache_is_bounded() {
        let a = Cached;
        let l = layout(3000, 8);
        // SAFETY: blocks are used within their layouts and freed once with them.
        unsafe {
            let p = a.alloc(l);
            p.write_bytes(0xab, l.size());
            a.dealloc(p, l);
            // Same class, other size: the cached block (class-sized, so large enough).
            let q = a.alloc(layout(4096, 16));
            assert_eq!(p, q);
            q.write_bytes(0xcd, 4096);
            a.dealloc(q, layout(4096, 16));
            // Fill past the bound: what does not fit goes back to the system.
            let many: Vec<*mut u8> = (0..KEEP + 8).map(|_| a.alloc(l)).collect();
            for &m in &many {
                a.dealloc(m, l);
            }
            CACHE.with(|c| assert_eq!(c[1].len.get(), KEEP));
            let zeroed = a.alloc_zeroed(l);
            assert!(std::slice::from_raw_parts(zeroed, l.size())
                .iter()
                .all(|b| *b == 0));
            a.dealloc(zeroed, l);
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_classes() {
        let a = Cached;
        // SAFETY: as above; each realloc's result replaces the block it was given.
        unsafe {
            let mut l = layout(100, 8);
            let mut p = a.alloc(l);
            for i in 0..100 {
                p.add(i).write(i as u8);
            }
            for size in [1500, 1800, 3000, 7000, 20_000, 5000, 1100, 50] {
                p = a.realloc(p, l, size);
                assert!(!p.is_null());
                let kept = l.size().min(size).min(100);
                for i in 0..kept {
                    assert_eq!(p.add(i).read(), i as u8, "byte {i} after {size}");
                }
                l = layout(size, 8);
            }
            a.dealloc(p, l);
        }
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
            });
        });
    }
}
