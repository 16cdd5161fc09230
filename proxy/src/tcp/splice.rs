//! Zero-copy forwarding between two TCP sockets with `splice(2)` through a pipe: bytes move
//! socket → pipe → socket inside the kernel, never through userspace buffers. Used by the TCP
//! proxy on Linux; the userspace copy in `copy_bidirectional` is the fallback.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call; the pipe is grown to hold them (F_SETPIPE_SZ).
const CHUNK: usize = 1024 * 1024;

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by us alone.
        let p = unsafe {
            Pipe {
                r: OwnedFd::from_raw_fd(fds[0]),
                w: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // A larger pipe means fewer syscalls per byte; failure (limits) keeps the default.
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(p.w.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        Ok(p)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on descriptors the caller keeps open for the call's duration;
    // null offsets mean "use the file position" (required for sockets and pipes).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One direction: `from` → `to` until EOF (then half-closes `to`).
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    last: &AtomicU64,
    epoch: Instant,
) -> io::Result<u64> {
    let pipe = Pipe::new()?;
    let mut total = 0u64;
    loop {
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.w.as_raw_fd(), CHUNK)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.r.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
        last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Forwards both ways until both directions end, an error occurs, or nothing moved for `idle`.
/// Returns bytes (a→b, b→a).
pub async fn bidirectional(
    a: &TcpStream,
    b: &TcpStream,
    idle: Option<Duration>,
) -> io::Result<(u64, u64)> {
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let both = async {
        let (x, y) = tokio::join!(one_way(a, b, &last, epoch), one_way(b, a, &last, epoch));
        Ok::<_, io::Error>((x?, y?))
    };
    let Some(idle) = idle else { return both.await };
    tokio::pin!(both);
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = tokio::time::Instant::from_std(epoch + since + idle);
        tokio::select! {
            r = &mut both => return r,
            _ = tokio::time::sleep_until(deadline) => {
                let now = epoch.elapsed();
                if now >= Duration::from_millis(last.load(Ordering::Relaxed)) + idle {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                }
            }
        }
    }
}
