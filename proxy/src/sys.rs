//! Small process-level helpers that need the C library.
#![allow(unsafe_code)]

/// Returns freed heap memory to the operating system (glibc keeps it otherwise), after large
/// transient structures such as the descriptor pool or a config translation are dropped.
pub fn trim_heap() {
    // The binary's global allocator is mimalloc: return its freed pages now.
    // SAFETY: mi_collect only walks mimalloc's own heaps.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; any argument is valid.
    unsafe {
        libc::malloc_trim(0);
    }
}
