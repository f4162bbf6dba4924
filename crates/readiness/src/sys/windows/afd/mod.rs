//! The raw AFD layer: `\Device\Afd` handles, `IOCTL_AFD_POLL`, cancellation,
//! base socket handles, and the completion port both backends drain.
//!
//! AFD ("ancillary function driver") is the kernel driver under Winsock.
//! `IOCTL_AFD_POLL` asks it to complete an I/O request when any of a set of
//! events holds on a socket; the poll is level-triggered (it completes at once
//! when an event already holds). Completed through an I/O completion port it
//! behaves like one `epoll` registration. The interface is undocumented; what
//! this module relies on is pinned down by the tests at the bottom, and where
//! Wine differs, by the list in `docs/WINDOWS.md`.
//!
//! The functions that hand memory to the kernel are `unsafe`: the caller keeps
//! that memory alive and unmoved until the request's completion packet has
//! been dequeued from the port.

use std::ffi::c_void;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle, RawSocket};
use std::ptr::{null, null_mut};
use std::time::Duration;

use windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES;
use windows_sys::Wdk::Storage::FileSystem::{FILE_OPEN, NtCancelIoFileEx, NtCreateFile};
use windows_sys::Wdk::System::IO::NtDeviceIoControlFile;
use windows_sys::Win32::Foundation::{
    ERROR_INVALID_PARAMETER, HANDLE, INVALID_HANDLE_VALUE, NTSTATUS, RtlNtStatusToDosError,
    STATUS_CANCELLED, STATUS_NOT_FOUND, STATUS_PENDING, UNICODE_STRING, WAIT_TIMEOUT,
};
use windows_sys::Win32::Networking::WinSock::{
    INVALID_SOCKET, SIO_BASE_HANDLE, SIO_BSP_HANDLE_POLL, SIO_BSP_HANDLE_SELECT, SOCKET,
    SOCKET_ERROR, WSAGetLastError, WSAIoctl,
};
use windows_sys::Win32::Storage::FileSystem::{
    FILE_SHARE_READ, FILE_SHARE_WRITE, SYNCHRONIZE, SetFileCompletionNotificationModes,
};
use windows_sys::Win32::System::IO::{
    CreateIoCompletionPort, GetQueuedCompletionStatusEx, IO_STATUS_BLOCK, OVERLAPPED_ENTRY,
    PostQueuedCompletionStatus,
};
use windows_sys::Win32::System::WindowsProgramming::{
    FILE_SKIP_COMPLETION_PORT_ON_SUCCESS, FILE_SKIP_SET_EVENT_ON_HANDLE,
};

/// `IOCTL_AFD_POLL`: `_AFD_CONTROL_CODE(AFD_POLL = 9, METHOD_BUFFERED)`.
pub(crate) const IOCTL_AFD_POLL: u32 = 0x0001_2024;

/// Data can be received (or a datagram is queued).
pub(crate) const AFD_POLL_RECEIVE: u32 = 0x0001;
/// Out-of-band (urgent) data can be received.
pub(crate) const AFD_POLL_RECEIVE_EXPEDITED: u32 = 0x0002;
/// Data can be sent.
pub(crate) const AFD_POLL_SEND: u32 = 0x0004;
/// The peer shut down its sending side (FIN received).
pub(crate) const AFD_POLL_DISCONNECT: u32 = 0x0008;
/// The connection was reset or aborted.
pub(crate) const AFD_POLL_ABORT: u32 = 0x0010;
/// This process closed the socket handle the poll was for.
pub(crate) const AFD_POLL_LOCAL_CLOSE: u32 = 0x0020;
/// The connection is established. Stays set for the connection's life.
pub(crate) const AFD_POLL_CONNECT: u32 = 0x0040;
/// A connection can be accepted on a listening socket.
pub(crate) const AFD_POLL_ACCEPT: u32 = 0x0080;
/// An outbound connection attempt failed.
pub(crate) const AFD_POLL_CONNECT_FAIL: u32 = 0x0100;

/// One socket of a poll request.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct AfdPollHandleInfo {
    pub handle: HANDLE,
    pub events: u32,
    pub status: NTSTATUS,
}

/// An `IOCTL_AFD_POLL` request and reply, for one socket (the only form used:
/// one request per socket keeps cancellation precise).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct AfdPollInfo {
    /// Absolute or relative NT time; `i64::MAX` means no timeout.
    pub timeout: i64,
    pub number_of_handles: u32,
    /// Non-zero: this poll replaces any other exclusive poll on the socket.
    pub exclusive: u32,
    pub handles: [AfdPollHandleInfo; 1],
}

impl AfdPollInfo {
    /// A request for `events` on the socket whose base handle is `base`.
    pub(crate) fn new(base: RawSocket, events: u32, exclusive: bool) -> AfdPollInfo {
        AfdPollInfo {
            timeout: i64::MAX,
            number_of_handles: 1,
            exclusive: exclusive as u32,
            handles: [AfdPollHandleInfo {
                handle: base as HANDLE,
                events,
                status: 0,
            }],
        }
    }

    /// The events of the reply (zero if the socket was not reported).
    pub(crate) fn events(&self) -> u32 {
        if self.number_of_handles == 0 {
            0
        } else {
            self.handles[0].events
        }
    }
}

/// A zeroed status block.
pub(crate) fn status_block() -> IO_STATUS_BLOCK {
    // SAFETY: IO_STATUS_BLOCK is plain data (an integer union and an
    // integer); all zeroes is a valid value.
    unsafe { zeroed() }
}

/// The status of a completed (or pending) request.
pub(crate) fn status_of(iosb: &IO_STATUS_BLOCK) -> NTSTATUS {
    // SAFETY: both union members are integers of the same size; reading the
    // status is always defined.
    unsafe { iosb.Anonymous.Status }
}

/// The events of a poll that the kernel has finished but whose completion
/// packet may not have been dequeued yet; `None` while it is still pending.
/// This is `HasOverlappedIoCompleted`: the status leaves `STATUS_PENDING`
/// only after the reply has been copied out.
///
/// # Safety
///
/// `iosb` and `info` must be the live status block and poll info of a poll
/// issued with [`poll`]; they are only read, atomically for the status.
pub(crate) unsafe fn finished_events(
    iosb: *const IO_STATUS_BLOCK,
    info: *const AfdPollInfo,
) -> Option<u32> {
    use std::sync::atomic::{AtomicI32, Ordering};
    // SAFETY: the status is an aligned i32 that the kernel may write
    // concurrently: read it atomically. Acquire orders the read of the reply
    // after it.
    let status = unsafe { AtomicI32::from_ptr((&raw const (*iosb).Anonymous.Status).cast_mut()) }
        .load(Ordering::Acquire);
    if status == STATUS_PENDING {
        return None;
    }
    if !nt_success(status) {
        return Some(0);
    }
    // SAFETY: the request is finished: the kernel no longer writes `info`.
    Some(unsafe { std::ptr::read_volatile(info) }.events())
}

/// Whether an NTSTATUS is a success (or informational) code.
pub(crate) fn nt_success(status: NTSTATUS) -> bool {
    status >= 0
}

/// The `io::Error` for an NTSTATUS.
pub(crate) fn nt_error(status: NTSTATUS) -> io::Error {
    // SAFETY: a pure function of its argument.
    let code = unsafe { RtlNtStatusToDosError(status) };
    io::Error::from_raw_os_error(code as i32)
}

/// Whether a completed request was cancelled.
pub(crate) fn is_cancelled(status: NTSTATUS) -> bool {
    status == STATUS_CANCELLED
}

/// An I/O completion port.
#[derive(Debug)]
pub(crate) struct CompletionPort {
    handle: OwnedHandle,
}

impl CompletionPort {
    pub(crate) fn new() -> io::Result<CompletionPort> {
        // SAFETY: creating a new port takes no pointers.
        let h = unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, null_mut(), 0, 0) };
        if h.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `h` is a fresh handle that nothing else owns.
        let handle = unsafe { OwnedHandle::from_raw_handle(h as RawHandle) };
        Ok(CompletionPort { handle })
    }

    pub(crate) fn raw(&self) -> HANDLE {
        self.handle.as_raw_handle() as HANDLE
    }

    /// Associates `handle` with this port: its completions arrive here with
    /// completion key `key`. A handle can be associated with one port only,
    /// once; a second association fails with `ERROR_INVALID_PARAMETER`.
    pub(crate) fn associate(&self, handle: HANDLE, key: usize) -> io::Result<()> {
        // SAFETY: `handle` is only read by the call; an invalid one fails.
        let h = unsafe { CreateIoCompletionPort(handle, self.raw(), key, 0) };
        if h.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Queues a packet with no overlapped pointer (used as a wake-up).
    pub(crate) fn post(&self, key: usize) -> io::Result<()> {
        // SAFETY: no memory is lent: the overlapped pointer is null.
        if unsafe { PostQueuedCompletionStatus(self.raw(), 0, key, null()) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Dequeues up to `entries.len()` packets, waiting at most `timeout`
    /// (`None`: forever). Returns how many were stored; zero on timeout.
    pub(crate) fn get_many(
        &self,
        entries: &mut [OVERLAPPED_ENTRY],
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let ms = match timeout {
            None => u32::MAX, // INFINITE
            // Round up: the portable layer never spins on a sub-millisecond
            // remainder. Cap below INFINITE.
            Some(t) => t.as_nanos().div_ceil(1_000_000).min(u32::MAX as u128 - 1) as u32,
        };
        let mut removed = 0u32;
        let count = entries.len().min(u32::MAX as usize) as u32;
        // SAFETY: `entries` is a valid writable array of at least `count`
        // entries and `removed` a valid u32, both alive across the call.
        let ok = unsafe {
            GetQueuedCompletionStatusEx(
                self.raw(),
                entries.as_mut_ptr(),
                count,
                &mut removed,
                ms,
                0,
            )
        };
        if ok == 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(WAIT_TIMEOUT as i32) {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(removed as usize)
    }
}

/// A handle to `\Device\Afd`, on which polls for any socket can be issued.
#[derive(Debug)]
pub(crate) struct Afd {
    handle: OwnedHandle,
}

impl Afd {
    /// Opens a new `\Device\Afd` handle.
    pub(crate) fn open() -> io::Result<Afd> {
        // Any name below \Device\Afd opens the driver; the name is ours.
        let name: Vec<u16> = "\\Device\\Afd\\readiness".encode_utf16().collect();
        let name = UNICODE_STRING {
            Length: (name.len() * 2) as u16,
            MaximumLength: (name.len() * 2) as u16,
            Buffer: name.as_ptr() as *mut u16,
        };
        let attributes = OBJECT_ATTRIBUTES {
            Length: size_of::<OBJECT_ATTRIBUTES>() as u32,
            RootDirectory: null_mut(),
            ObjectName: &name,
            Attributes: 0,
            SecurityDescriptor: null(),
            SecurityQualityOfService: null(),
        };
        let mut handle: HANDLE = null_mut();
        let mut iosb = status_block();
        // SAFETY: every pointer refers to a live local that outlives the
        // synchronous call (`name`'s buffer included); no extended attributes.
        let status = unsafe {
            NtCreateFile(
                &mut handle,
                SYNCHRONIZE,
                &attributes,
                &mut iosb,
                null(),
                0,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                FILE_OPEN,
                0,
                null(),
                0,
            )
        };
        if !nt_success(status) {
            return Err(nt_error(status));
        }
        // SAFETY: a fresh handle that nothing else owns.
        let handle = unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) };
        Ok(Afd { handle })
    }

    pub(crate) fn raw(&self) -> HANDLE {
        self.handle.as_raw_handle() as HANDLE
    }
}

/// Sets completion modes on a handle already associated with a port:
/// `FILE_SKIP_SET_EVENT_ON_HANDLE` always (nobody waits on the handle), and
/// `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS` when asked (then a request that
/// succeeds at once queues no packet).
pub(crate) fn set_completion_modes(handle: HANDLE, skip_port_on_success: bool) -> io::Result<()> {
    let mut flags = FILE_SKIP_SET_EVENT_ON_HANDLE as u8;
    if skip_port_on_success {
        flags |= FILE_SKIP_COMPLETION_PORT_ON_SUCCESS as u8;
    }
    // SAFETY: takes a handle by value; an invalid one fails.
    if unsafe { SetFileCompletionNotificationModes(handle, flags) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Issues `IOCTL_AFD_POLL` on `handle` (a `\Device\Afd` handle, or a socket's
/// base handle for the direct variant).
///
/// Returns the immediate status: `STATUS_PENDING`, a success code (the poll
/// was satisfied at once; a packet is still queued to the port unless the
/// handle skips the port on success), or an error (no packet is queued).
///
/// # Safety
///
/// `info` and `iosb` must stay valid, unmoved and otherwise untouched until
/// the request's completion packet, carrying `context` as its overlapped
/// pointer, has been dequeued from the port `handle` is associated with, or,
/// when no packet is queued (an error, or a success on a handle that skips the
/// port), until this returns.
pub(crate) unsafe fn poll(
    handle: HANDLE,
    info: *mut AfdPollInfo,
    iosb: *mut IO_STATUS_BLOCK,
    context: *const c_void,
) -> NTSTATUS {
    // SAFETY: the caller keeps `iosb` and `info` alive until the completion;
    // input and output are the same buffer, as AFD allows (METHOD_BUFFERED
    // copies the input before writing the output).
    unsafe {
        (*iosb).Anonymous.Status = STATUS_PENDING;
        NtDeviceIoControlFile(
            handle,
            null_mut(),
            None,
            context,
            iosb,
            IOCTL_AFD_POLL,
            info as *const c_void,
            size_of::<AfdPollInfo>() as u32,
            info as *mut c_void,
            size_of::<AfdPollInfo>() as u32,
        )
    }
}

/// Asks the kernel to cancel the request whose status block is `iosb`, issued
/// on `handle`. The request still completes, through the port, with
/// `STATUS_CANCELLED` or (if it won the race) its normal result: exactly one
/// packet either way. Returns false when no such request was outstanding.
///
/// # Safety
///
/// `iosb` is only compared with the status blocks of outstanding requests,
/// never dereferenced, but must be the block of a request issued on `handle`
/// whose memory the caller still keeps alive (so that its address cannot
/// belong to a different request).
pub(crate) unsafe fn cancel(handle: HANDLE, iosb: *const IO_STATUS_BLOCK) -> io::Result<bool> {
    let mut cancel_iosb = status_block();
    // SAFETY: `cancel_iosb` is a live local; `iosb` is used as an identifier.
    let status = unsafe { NtCancelIoFileEx(handle, iosb, &mut cancel_iosb) };
    if nt_success(status) {
        Ok(true)
    } else if status == STATUS_NOT_FOUND {
        Ok(false)
    } else {
        Err(nt_error(status))
    }
}

/// The base service provider's handle of `socket`: the handle AFD knows.
///
/// Layered service providers can intercept `SIO_BASE_HANDLE`; then ask each
/// layer for the handle it polls with (`SIO_BSP_HANDLE_POLL`, or
/// `SIO_BSP_HANDLE_SELECT`) and try again from there, until the base is found.
pub(crate) fn base_socket(socket: RawSocket) -> io::Result<RawSocket> {
    let mut current = socket;
    // Each step strips at least one layer; real stacks have a handful.
    for _ in 0..16 {
        if let Ok(base) = ioctl_socket(current, SIO_BASE_HANDLE) {
            return Ok(base);
        }
        let next = ioctl_socket(current, SIO_BSP_HANDLE_POLL)
            .or_else(|_| ioctl_socket(current, SIO_BSP_HANDLE_SELECT))?;
        if next == current {
            break;
        }
        current = next;
    }
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no base socket handle: a layered service provider hides it",
    ))
}

fn ioctl_socket(socket: RawSocket, code: u32) -> io::Result<RawSocket> {
    let mut out: SOCKET = INVALID_SOCKET;
    let mut bytes = 0u32;
    // SAFETY: `out` and `bytes` are live locals of the sizes passed; no
    // overlapped I/O is requested, so the call is synchronous.
    let r = unsafe {
        WSAIoctl(
            socket as SOCKET,
            code,
            null(),
            0,
            (&mut out as *mut SOCKET).cast(),
            size_of::<SOCKET>() as u32,
            &mut bytes,
            null_mut(),
            None,
        )
    };
    if r == SOCKET_ERROR || out == INVALID_SOCKET {
        // SAFETY: reads this thread's last Winsock error.
        let code = unsafe { WSAGetLastError() };
        return Err(io::Error::from_raw_os_error(code));
    }
    Ok(out as RawSocket)
}

/// Whether an association failed because the handle already has a port.
pub(crate) fn is_already_associated(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_INVALID_PARAMETER as i32)
}

/// Whether this process runs under Wine (its ntdll exports
/// `wine_get_version`). Used to label known Wine differences, never to change
/// what the library does.
pub(crate) fn is_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
    // SAFETY: both take NUL-terminated static strings; ntdll is loaded in
    // every process, and the returned module handle is not freed.
    unsafe {
        let ntdll = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
        !ntdll.is_null() && GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_some()
    }
}

#[cfg(test)]
mod tests;
