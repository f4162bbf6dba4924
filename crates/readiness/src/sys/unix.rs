//! What the Unix backends share.

use std::os::fd::BorrowedFd;
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
