//! Windows: readiness from `IOCTL_AFD_POLL` through an I/O completion port.
//!
//! [`afd`] is the raw layer (device handles, polls, cancellation, base
//! handles, the port); [`poller`] builds both backends on it. The design is
//! explained in `docs/WINDOWS.md`.

pub(crate) mod afd;
mod poller;

use std::os::windows::io::BorrowedSocket;

use windows_sys::Win32::System::IO::OVERLAPPED_ENTRY;

pub(crate) use poller::IocpPoller;

/// A registered source, as the Windows backends see it.
pub(crate) type Source<'a> = BorrowedSocket<'a>;

pub(crate) fn source(source: &(impl crate::AsSource + ?Sized)) -> Source<'_> {
    source.as_socket()
}

/// The completion entries one wait dequeues, kept in `Events` so that
/// concurrent waits share no buffer.
pub(crate) struct RawEvents(pub(crate) Vec<OVERLAPPED_ENTRY>);

impl RawEvents {
    pub(crate) fn with_capacity(capacity: usize) -> RawEvents {
        RawEvents(vec![OVERLAPPED_ENTRY::default(); capacity])
    }
}

// SAFETY: the entries are plain copies the kernel fills during one wait; the
// pointers in them are only interpreted by the poller during that same call,
// never through `Events` afterwards. Moving or sharing the buffer between
// threads is therefore as safe as for integers.
unsafe impl Send for RawEvents {}
// SAFETY: as above; a shared `&RawEvents` gives no access to the entries.
unsafe impl Sync for RawEvents {}
