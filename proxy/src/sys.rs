//! Small process-level helpers that need the C library.
#![allow(unsafe_code)]

/// Returns freed heap memory to the operating system (glibc keeps it otherwise), after large
/// transient structures such as the descriptor pool or a config translation are dropped, and
/// unmaps the code that work ran ([`release_code`]).
pub fn trim_heap() {
    release_code();
    // This thread's cached blocks first (`alloc.rs`), so they can be given back too.
    crate::alloc::flush_this_thread();
    // With mimalloc as the global allocator: return its freed pages now.
    #[cfg(feature = "mimalloc")]
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

/// Unmaps the executable's code pages (its `r-xp` mapping). Start-up and configuration run
/// code the data path never runs again (decoding, translation, validation): about 8 MiB of the
/// proxy's RSS right after start-up was code, most of it that. The pages stay in the page
/// cache; the ones that run next are mapped again on first use, a minor fault each. Code is
/// never written (no text relocations), so nothing is lost.
pub fn release_code() {
    #[cfg(target_os = "linux")]
    for (start, len) in own_code_mappings() {
        // SAFETY: the range is this executable's read-only code mapping, whose pages are
        // never modified; dropping them only makes the next access read the file's pages
        // again.
        unsafe {
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED);
        }
    }
}

/// The address ranges of this executable's code mappings (`/proc/self/maps`).
#[cfg(target_os = "linux")]
fn own_code_mappings() -> Vec<(usize, usize)> {
    let (Ok(exe), Ok(maps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/maps"),
    ) else {
        return Vec::new();
    };
    let exe = exe.to_string_lossy();
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            // The path is the rest of the line after offset, device and inode.
            let path = line.find('/').map(|i| &line[i..])?;
            if perms != "r-xp" || path != exe {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            Some((a, b.checked_sub(a)?))
        })
        .collect()
}

/// The heap figures `/memory` reports, in bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// In use by the program (mimalloc's committed memory + glibc's `uordblks + hblkhd`).
    pub allocated: u64,
    /// Obtained from the system for the heap (mimalloc's committed memory + glibc's
    /// `arena + hblkhd`).
    pub heap_size: u64,
    /// Free inside the heap (glibc: `fordblks`).
    pub free: u64,
    /// Resident set size (`/proc/self/statm`).
    pub resident: u64,
}

/// The allocator's and the kernel's view of this process's memory. Fields the platform cannot
/// tell are 0.
pub fn heap_stats() -> HeapStats {
    let mut s = HeapStats::default();
    // mimalloc (when it is the global allocator) tells its committed memory, not its live
    // bytes: that counts as allocated and as heap.
    #[cfg(feature = "mimalloc")]
    {
        let mut commit = 0usize;
        let mut unused = [0usize; 7];
        let [a, b, c, d, e, f, g] = &mut unused;
        // SAFETY: every pointer is a valid, writable usize for the duration of the call.
        unsafe {
            libmimalloc_sys::mi_process_info(a, b, c, d, e, &mut commit, f, g);
        }
        s.allocated = commit as u64;
        s.heap_size = commit as u64;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and only reads the allocator's counters.
        let m = unsafe { libc::mallinfo2() };
        s.allocated += (m.uordblks + m.hblkhd) as u64;
        s.heap_size += (m.arena + m.hblkhd) as u64;
        s.free = m.fordblks as u64;
    }
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
        s.resident = pages * page;
    }
    s
}

/// `recv(2)` into `buf`, as a direct system call. glibc's `recv` and `writev` wrappers make the
/// thread cancellable around the call (two atomic operations on the thread's cancellation
/// state, for `pthread_cancel`, which Rust never uses); the proxy's sockets skip them.
pub fn recv(
    fd: std::os::fd::RawFd,
    buf: &mut [std::mem::MaybeUninit<u8>],
) -> std::io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes at `buf`; no address is asked for
    // (null pointers).
    restarted(|| unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            libc::c_long::from(fd),
            buf.as_mut_ptr(),
            buf.len(),
            0 as libc::c_long,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    })
}

/// Linux's limit on the slices of one vectored write (`UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// `writev(2)` of `bufs` (at most [`IOV_MAX`] of them), as a direct system call (see
/// [`recv`]).
pub fn writev(fd: std::os::fd::RawFd, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
    let count = bufs.len().min(IOV_MAX);
    // SAFETY: `IoSlice` has `iovec`'s layout on Unix, and the kernel only reads the `count`
    // slices and the memory they point to.
    restarted(|| unsafe {
        libc::syscall(
            libc::SYS_writev,
            libc::c_long::from(fd),
            bufs.as_ptr(),
            count as libc::c_long,
        )
    })
}

/// A system call's byte count, made again when a signal interrupted it.
fn restarted(mut call: impl FnMut() -> libc::c_long) -> std::io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Resident KiB of this executable's code mappings (`/proc/self/smaps`).
    fn code_rss_kib() -> u64 {
        let ranges = own_code_mappings();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let mut kib = 0;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-')) {
                let start = range
                    .split_once('-')
                    .and_then(|(a, _)| usize::from_str_radix(a, 16).ok());
                inside = start.is_some_and(|s| ranges.iter().any(|&(a, _)| a == s));
            } else if let Some(v) = line.strip_prefix("Rss:").filter(|_| inside) {
                kib += v.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
            }
        }
        kib
    }

    #[test]
    fn released_code_pages_leave_the_rss_and_come_back_when_they_run() {
        assert!(
            !own_code_mappings().is_empty(),
            "the test binary's code is found"
        );
        let before = code_rss_kib();
        release_code();
        let after = code_rss_kib();
        assert!(after < before, "code RSS {before} KiB -> {after} KiB");
        // The code still runs: what it needs is mapped again.
        let v: Vec<u64> = (0..1000).map(|i| i * i).collect();
        assert_eq!(v.iter().sum::<u64>(), 332_833_500);
        assert!(heap_stats().resident > 0);
    }
}
