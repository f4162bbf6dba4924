//! What the Unix backends share.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::Timespec;

/// A registered source, as the Unix backends see it.
pub(crate) type Source<'a> = BorrowedFd<'a>;

pub(crate) fn source(source: &(impl crate::AsSource + ?Sized)) -> Source<'_> {
    source.as_fd()
}

/// The longest single kernel wait: `epoll_wait` and `poll` take milliseconds
/// in a C `int`. Longer waits are split by the portable loop in `lib.rs`.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(i32::MAX as u64);

/// A kernel timeout for `timeout`: `None` blocks forever, and anything longer
/// than a C `int` of milliseconds is cut to that.
#[inline]
pub(crate) fn timespec(timeout: Option<Duration>) -> Option<Timespec> {
    timeout.map(|t| {
        let t = t.min(MAX_WAIT);
        Timespec {
            tv_sec: t.as_secs() as _,
            tv_nsec: t.subsec_nanos() as _,
        }
    })
}

/// Reads everything an eventfd or pipe wake-up source holds.
pub(crate) fn drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 64];
    // Non-blocking: stops at `WouldBlock` (or at any other error, which only
    // means there is nothing more to take).
    while let Ok(n) = rustix::io::read(fd, &mut buf) {
        if n < buf.len() {
            break;
        }
    }
}

/// A non-blocking, close-on-exec pipe `(read, write)` for wake-ups. Both
/// flags are set atomically by `pipe2` where the OS has it, so a concurrent
/// fork + exec cannot inherit the pipe.
pub(crate) fn wake_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(not(target_vendor = "apple"))]
    {
        use rustix::pipe::PipeFlags;
        Ok(rustix::pipe::pipe_with(
            PipeFlags::CLOEXEC | PipeFlags::NONBLOCK,
        )?)
    }
    // Apple OSes have no `pipe2`: the flags are set afterwards, and a fork +
    // exec on another thread in between inherits the pipe.
    #[cfg(target_vendor = "apple")]
    {
        let (read, write) = rustix::pipe::pipe()?;
        for fd in [&read, &write] {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
            rustix::io::ioctl_fionbio(fd, true)?;
        }
        Ok((read, write))
    }
}
