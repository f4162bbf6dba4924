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
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_OPEN, FileIoCompletionNotificationInformation, NtCancelIoFileEx, NtCreateFile,
    NtQueryInformationFile,
};
use windows_sys::Wdk::System::IO::NtDeviceIoControlFile;
use windows_sys::Wdk::System::SystemInformation::NtQuerySystemInformation;
use windows_sys::Win32::Foundation::{
    ERROR_INVALID_PARAMETER, HANDLE, INVALID_HANDLE_VALUE, NTSTATUS, RtlNtStatusToDosError,
    STATUS_CANCELLED, STATUS_NOT_FOUND, STATUS_PENDING, UNICODE_STRING, WAIT_TIMEOUT,
};
use windows_sys::Win32::Networking::WinSock::{
    INVALID_SOCKET, IPPROTO_TCP, IPPROTO_UDP, SIO_BASE_HANDLE, SIO_BSP_HANDLE_POLL,
    SIO_BSP_HANDLE_SELECT, SIO_TCP_INFO, SO_TYPE, SOCK_STREAM, SOCKET, SOCKET_ERROR, SOL_SOCKET,
    TCP_INFO_v0, TCPSTATE_CLOSED, TCPSTATE_CLOSING, TCPSTATE_FIN_WAIT_1, TCPSTATE_FIN_WAIT_2,
    TCPSTATE_LAST_ACK, TCPSTATE_TIME_WAIT, WSADATA, WSAEINVAL, WSAENOBUFS, WSAEOPNOTSUPP,
    WSAESHUTDOWN, WSAEnumProtocolsW, WSAGetLastError, WSAIoctl, WSAPROTOCOL_INFOW, WSAStartup,
    XP1_IFS_HANDLES, getsockopt, send,
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
/// The connection is established. Stays set for the connection's life, so
/// the backends never ask for it (`SEND` arrives with it); the raw tests do.
#[cfg_attr(not(test), allow(dead_code))]
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

// The driver's layout, checked when the crate is built for any Windows
// target (the cross check builds 64- and 32-bit): LARGE_INTEGER, two ULONGs,
// then {HANDLE, ULONG, NTSTATUS}; 16 + 32 bytes on 64-bit, 12 + 32 (28
// rounded up to the LARGE_INTEGER's alignment) on 32-bit.
const _: () = {
    assert!(size_of::<AfdPollHandleInfo>() == size_of::<HANDLE>() + 8);
    assert!(size_of::<AfdPollInfo>() == 32);
    assert!(std::mem::offset_of!(AfdPollInfo, handles) == 16);
};

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

/// What the poller writes into the status block of a request whose
/// completion was dequeued with its result never written (see
/// [`result_lost`]): an NTSTATUS of ours (customer bit set, error severity),
/// which no system call returns.
pub(crate) const STATUS_RESULT_LOST: NTSTATUS = 0xE000_0103_u32 as NTSTATUS;

/// Whether the request whose completion packet was just dequeued, with
/// status block `iosb`, finished without its result being written: its
/// status is still `STATUS_PENDING`. Under Wine a poll whose issuing thread
/// exits completes like that (docs/WINDOWS.md, "Polls whose thread exits");
/// its reply then still holds the request, not events. The status block is
/// the caller's again, so such a status is replaced by
/// [`STATUS_RESULT_LOST`]: nothing may later take the block for one of a
/// request still in the kernel.
///
/// # Safety
///
/// `iosb` must be the status block of a request whose completion packet has
/// been dequeued (the kernel is done with it), and nothing else may access
/// it during the call.
pub(crate) unsafe fn result_lost(iosb: *mut IO_STATUS_BLOCK) -> bool {
    // SAFETY: the caller guarantees exclusive access to a block the kernel
    // no longer writes; both union members are integers.
    unsafe {
        if (*iosb).Anonymous.Status == STATUS_PENDING {
            (*iosb).Anonymous.Status = STATUS_RESULT_LOST;
            true
        } else {
            false
        }
    }
}

/// Whether an NTSTATUS is a success or informational code (severity 0 or
/// 1), `STATUS_PENDING` included.
pub(crate) fn nt_success(status: NTSTATUS) -> bool {
    status >= 0
}

/// Whether an NTSTATUS has error severity (its top two bits are `11`).
/// Warnings (`10`) are not errors: a request that returns one still
/// completes through the port.
pub(crate) fn nt_error_severity(status: NTSTATUS) -> bool {
    (status as u32) >> 30 == 3
}

/// What became of a request, by its immediate status, as the I/O manager
/// treats it: whether a completion packet will be queued to the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Submitted {
    /// Pending, or finished with a status that queues a packet: the
    /// request's memory belongs to the kernel until the packet is dequeued.
    Queued,
    /// Finished at once with success on a handle that skips the port on
    /// success: no packet comes; the status block and reply are written.
    Inline,
    /// Failed at once with an error-severity status: no packet comes, and
    /// the kernel did not keep the memory.
    Failed,
}

/// Classifies the immediate status of a request issued on a handle whose
/// completion mode skips the port on success (`skip`) or not.
///
/// - `STATUS_PENDING`: queued.
/// - Success and informational codes: queued, unless `skip`.
/// - Warnings (severity `10`, e.g. `STATUS_BUFFER_OVERFLOW`): queued, with
///   `skip` too (skipping applies to success only).
/// - Errors (severity `11`): nothing is queued.
pub(crate) fn classify(status: NTSTATUS, skip: bool) -> Submitted {
    if status == STATUS_PENDING {
        Submitted::Queued
    } else if nt_success(status) {
        if skip {
            Submitted::Inline
        } else {
            Submitted::Queued
        }
    } else if nt_error_severity(status) {
        Submitted::Failed
    } else {
        Submitted::Queued
    }
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

/// Whether `socket` names an open socket now. `getsockopt(SO_TYPE)` is
/// answered from Winsock's own table of sockets: a closed handle fails with
/// `WSAENOTSOCK` on Windows and under Wine (where `SIO_BASE_HANDLE` still
/// succeeds on a closed handle). A handle value reused by a new socket passes:
/// this checks that a socket is there, not which one.
pub(crate) fn is_socket(socket: RawSocket) -> bool {
    socket_type(socket).is_some()
}

fn socket_type(socket: RawSocket) -> Option<i32> {
    let mut ty = 0i32;
    let mut len = size_of::<i32>() as i32;
    // SAFETY: `ty` and `len` are live locals of the sizes passed.
    let r = unsafe {
        getsockopt(
            socket as SOCKET,
            SOL_SOCKET,
            SO_TYPE,
            (&raw mut ty).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(ty)
}

/// Whether the sending side of the stream socket `socket` is shut down (by
/// `shutdown(Write)` or `shutdown(Both)` in this process). AFD reports no
/// event for a local shutdown, so this asks, without ever blocking:
///
/// - the TCP state (`SIO_TCP_INFO`, Windows 10 1703 and later): our FIN was
///   sent in every state from `FIN_WAIT_1` on except `CLOSE_WAIT`;
/// - where that is not answered (Wine, older Windows), and only when AFD
///   just reported room to send (`send_ready`), a zero-length send: it
///   transmits nothing and fails with `WSAESHUTDOWN` once sending is shut
///   down. Without room a zero-length send on a blocking socket would block
///   (seen under Wine), so it is never tried then.
///
/// Datagram sockets are never probed (a zero-length send would send an empty
/// datagram).
pub(crate) fn send_shut_down(socket: RawSocket, send_ready: bool) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// `SIO_TCP_INFO` failed as unsupported once: not asked again.
    static NO_TCP_INFO: AtomicBool = AtomicBool::new(false);
    if !NO_TCP_INFO.load(Ordering::Relaxed) {
        match tcp_state(socket) {
            Ok(state) => {
                return matches!(
                    state,
                    TCPSTATE_FIN_WAIT_1
                        | TCPSTATE_FIN_WAIT_2
                        | TCPSTATE_CLOSING
                        | TCPSTATE_TIME_WAIT
                        | TCPSTATE_LAST_ACK
                        | TCPSTATE_CLOSED
                );
            }
            Err(code) if code == WSAEOPNOTSUPP || code == WSAEINVAL => {
                NO_TCP_INFO.store(true, Ordering::Relaxed);
            }
            Err(_) => return false,
        }
    }
    if !send_ready || socket_type(socket) != Some(SOCK_STREAM) {
        return false;
    }
    // SAFETY: a zero-length send reads no buffer (the pointer is null and
    // the length 0) and writes nothing. It cannot block: AFD just reported
    // room to send.
    let r = unsafe { send(socket as SOCKET, null(), 0, 0) };
    // SAFETY: reads this thread's last Winsock error.
    r == SOCKET_ERROR && unsafe { WSAGetLastError() } == WSAESHUTDOWN
}

/// The TCP state of a connected socket (`SIO_TCP_INFO`, version 0), or the
/// Winsock error.
fn tcp_state(socket: RawSocket) -> Result<i32, i32> {
    let version: u32 = 0;
    // SAFETY: TCP_INFO_v0 is plain data; all zeroes is a valid value.
    let mut info: TCP_INFO_v0 = unsafe { std::mem::zeroed() };
    let mut bytes = 0u32;
    // SAFETY: the input is a live u32 and the output a live TCP_INFO_v0, of
    // the sizes passed; no overlapped I/O: the query is synchronous and does
    // not wait.
    let r = unsafe {
        WSAIoctl(
            socket as SOCKET,
            SIO_TCP_INFO,
            (&raw const version).cast(),
            size_of::<u32>() as u32,
            (&raw mut info).cast(),
            size_of::<TCP_INFO_v0>() as u32,
            &mut bytes,
            null_mut(),
            None,
        )
    };
    if r == SOCKET_ERROR {
        // SAFETY: reads this thread's last Winsock error.
        return Err(unsafe { WSAGetLastError() });
    }
    Ok(info.State)
}

/// Whether `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS` may be used: every
/// installed TCP and UDP protocol provider is an IFS provider
/// (`XP1_IFS_HANDLES`), so no layered provider completes requests in user
/// mode behind the flag's back. Checked once per process, as the
/// server-framework articles describe; false if the providers cannot be
/// listed.
pub(crate) fn skip_on_success_is_safe() -> bool {
    static SAFE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SAFE.get_or_init(|| match providers_are_ifs() {
        Ok(safe) => safe,
        Err(e) => {
            tracing::debug!(error = %e, "WSAEnumProtocolsW failed; not skipping the port");
            false
        }
    })
}

pub(crate) fn providers_are_ifs() -> io::Result<bool> {
    // Winsock must be started for the catalog to be listed (a poller may be
    // created before any socket): a reference of our own, never released
    // (std keeps one for the process too).
    // SAFETY: `data` is a live, writable WSADATA.
    let mut data: WSADATA = unsafe { std::mem::zeroed() };
    // SAFETY: as above; 0x202 asks for Winsock 2.2.
    let started = unsafe { WSAStartup(0x202, &mut data) };
    if started != 0 {
        return Err(io::Error::from_raw_os_error(started));
    }
    let protocols = [IPPROTO_TCP, IPPROTO_UDP, 0];
    let mut len = 0u32;
    // SAFETY: a null buffer with length 0 asks for the size needed; the
    // protocol list is a live, zero-terminated array.
    let r = unsafe { WSAEnumProtocolsW(protocols.as_ptr(), null_mut(), &mut len) };
    if r != SOCKET_ERROR {
        // No provider at all (r == 0): nothing can break the flag.
        return Ok(true);
    }
    // SAFETY: reads this thread's last Winsock error.
    let code = unsafe { WSAGetLastError() };
    if code != WSAENOBUFS {
        return Err(io::Error::from_raw_os_error(code));
    }
    let count = len as usize / size_of::<WSAPROTOCOL_INFOW>() + 1;
    let mut buf = vec![WSAPROTOCOL_INFOW::default(); count];
    let mut len = (buf.len() * size_of::<WSAPROTOCOL_INFOW>()) as u32;
    // SAFETY: `buf` is a live, writable array of `len` bytes.
    let n = unsafe { WSAEnumProtocolsW(protocols.as_ptr(), buf.as_mut_ptr(), &mut len) };
    if n == SOCKET_ERROR {
        // SAFETY: reads this thread's last Winsock error.
        return Err(io::Error::from_raw_os_error(unsafe { WSAGetLastError() }));
    }
    let listed = &buf[..(n as usize).min(buf.len())];
    Ok(listed
        .iter()
        .all(|p| p.dwServiceFlags1 & XP1_IFS_HANDLES != 0))
}

/// The completion notification modes of `handle`
/// (`FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`, `FILE_SKIP_SET_EVENT_ON_HANDLE`),
/// as set by anyone, through `FileIoCompletionNotificationInformation`.
pub(crate) fn completion_modes(handle: HANDLE) -> io::Result<u32> {
    let mut iosb = status_block();
    let mut flags = 0u32;
    // SAFETY: `iosb` and `flags` are live locals of the sizes passed; the
    // query is synchronous.
    let status = unsafe {
        NtQueryInformationFile(
            handle,
            &mut iosb,
            (&raw mut flags).cast(),
            size_of::<u32>() as u32,
            FileIoCompletionNotificationInformation,
        )
    };
    if !nt_success(status) {
        return Err(nt_error(status));
    }
    Ok(flags)
}

/// Whether `flags` (from [`completion_modes`]) skip the port on success.
pub(crate) fn skips_port(flags: u32) -> bool {
    flags & FILE_SKIP_COMPLETION_PORT_ON_SUCCESS != 0
}

/// The values of the handles this process holds, from the system handle
/// table (`SystemExtendedHandleInformation`, filtered by process id).
/// `GetProcessHandleCount` is no use for tests: Wine 8 answers 0.
pub(crate) fn process_handles() -> io::Result<Vec<usize>> {
    /// `SYSTEM_HANDLE_TABLE_ENTRY_INFO_EX`.
    #[repr(C)]
    struct Entry {
        object: *mut c_void,
        process_id: usize,
        handle: usize,
        access: u32,
        backtrace: u16,
        object_type: u16,
        attributes: u32,
        reserved: u32,
    }
    const SYSTEM_EXTENDED_HANDLE_INFORMATION: i32 = 64;
    const STATUS_INFO_LENGTH_MISMATCH: NTSTATUS = 0xC000_0004_u32 as NTSTATUS;
    let pid = std::process::id() as usize;
    let mut buf: Vec<usize> = vec![0; 1 << 14];
    loop {
        let bytes = (buf.len() * size_of::<usize>()) as u32;
        let mut needed = 0u32;
        // SAFETY: `buf` is a live, writable, pointer-aligned buffer of
        // `bytes` bytes; `needed` a live local.
        let status = unsafe {
            NtQuerySystemInformation(
                SYSTEM_EXTENDED_HANDLE_INFORMATION,
                buf.as_mut_ptr().cast(),
                bytes,
                &mut needed,
            )
        };
        if status == STATUS_INFO_LENGTH_MISMATCH {
            let words = (needed as usize).max(bytes as usize * 2) / size_of::<usize>() + 64;
            buf.resize(words, 0);
            continue;
        }
        if !nt_success(status) {
            return Err(nt_error(status));
        }
        // Layout: a count, a reserved word, then the entries.
        let count = buf[0];
        let room = (buf.len() - 2) * size_of::<usize>() / size_of::<Entry>();
        if count > room {
            return Err(io::Error::other("handle table larger than its buffer"));
        }
        // SAFETY: the kernel wrote `count` entries after the two header
        // words, within the buffer (checked above); `Entry` is plain data
        // aligned to a word, as the buffer is.
        let entries =
            unsafe { std::slice::from_raw_parts(buf.as_ptr().add(2).cast::<Entry>(), count) };
        return Ok(entries
            .iter()
            .filter(|e| e.process_id == pid)
            .map(|e| e.handle)
            .collect());
    }
}

/// Whether this Windows has `ProcessSocketNotifications` (Windows 10 21H1
/// and later): a socket-notification API that a future backend could use.
pub(crate) fn process_socket_notifications_available() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
    // SAFETY: both take NUL-terminated static strings; ws2_32 is loaded by
    // every process that made a socket, and the module handle is not freed.
    unsafe {
        let ws2 = GetModuleHandleA(c"ws2_32.dll".as_ptr().cast());
        !ws2.is_null()
            && GetProcAddress(ws2, c"ProcessSocketNotifications".as_ptr().cast()).is_some()
    }
}

#[cfg(test)]
mod tests;
