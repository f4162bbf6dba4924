//! Behaviour tests of the raw AFD layer: what the driver does, pinned down.
//!
//! Each test states a fact of Windows' AFD that the backends rely on. Where
//! Wine 8 behaves differently, the test still checks the Windows fact; the
//! difference is listed once, in [`WINE_DIFFERENCES`] (and in
//! `docs/WINDOWS.md`), and under Wine a listed test prints
//! `KNOWN WINE DIFFERENCE` instead of failing. A listed test that starts to
//! pass under Wine fails, so the list cannot go stale.

use std::io::{Read, Write};
use std::mem::size_of;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::windows::io::{AsRawSocket, RawSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use windows_sys::Win32::Foundation::{HANDLE, STATUS_PENDING};
use windows_sys::Win32::System::IO::{IO_STATUS_BLOCK, OVERLAPPED_ENTRY};

use super::*;

/// Tests whose Windows fact Wine 8.0 does not reproduce, with what Wine does.
const WINE_DIFFERENCES: &[(&str, &str)] = &[
    (
        "base_handle_of_a_closed_socket_fails",
        "SIO_BASE_HANDLE on a closed socket handle succeeds and returns the stale value",
    ),
    (
        "tcp_state_is_answered",
        "SIO_TCP_INFO fails with WSAEOPNOTSUPP",
    ),
    (
        "a_poll_whose_thread_exits_stays_pending",
        "a poll that completes while its thread exits is queued with its status block still \
         STATUS_PENDING and its reply holding the request",
    ),
];

/// Long enough for anything that should happen; only reached on failure.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long to watch for something that should not happen.
const QUIET: Duration = Duration::from_millis(200);

/// Checks one fact; see the module documentation for Wine.
fn fact(test: &str, holds: bool, detail: &str) {
    let listed = WINE_DIFFERENCES.iter().find(|(name, _)| *name == test);
    match (holds, listed, is_wine()) {
        (true, Some(_), true) => {
            panic!(
                "{test}: now holds under Wine; remove it from WINE_DIFFERENCES and docs/WINDOWS.md"
            )
        }
        (true, _, _) => {}
        (false, Some((_, what)), true) => {
            println!("KNOWN WINE DIFFERENCE in {test}: {what} (observed: {detail})");
        }
        (false, _, _) => panic!("{test}: {detail}"),
    }
}

/// A completion port with one `\Device\Afd` handle associated.
struct Rig {
    port: CompletionPort,
    afd: Afd,
}

/// The memory of one poll. Reclaimed only when its completion is dequeued
/// (`Rig::complete`): a `Poll` is a raw pointer, so dropping it otherwise
/// leaks the memory, which is always safe.
struct Poll {
    mem: *mut (IO_STATUS_BLOCK, AfdPollInfo),
    /// The immediate status `NtDeviceIoControlFile` returned.
    status: NTSTATUS,
}

/// What a completed poll reported.
#[derive(Debug)]
struct Done {
    status: NTSTATUS,
    events: u32,
}

impl Rig {
    fn new() -> Rig {
        let port = CompletionPort::new().expect("completion port");
        let afd = Afd::open().expect("open \\Device\\Afd");
        port.associate(afd.raw(), 0).expect("associate AFD handle");
        set_completion_modes(afd.raw(), false).expect("completion modes");
        Rig { port, afd }
    }

    fn poll(&self, socket: &impl AsRawSocket, events: u32) -> Poll {
        self.poll_on(self.afd.raw(), socket, events)
    }

    fn poll_on(&self, handle: HANDLE, socket: &impl AsRawSocket, events: u32) -> Poll {
        let base = base_socket(socket.as_raw_socket()).expect("base handle");
        let mem = Box::into_raw(Box::new((
            status_block(),
            AfdPollInfo::new(base, events, false),
        )));
        // SAFETY: `mem` is only reclaimed after its completion is dequeued
        // (`complete`) or, when no packet can come, right here.
        let status = unsafe { poll(handle, &raw mut (*mem).1, &raw mut (*mem).0, mem.cast()) };
        if !nt_success(status) {
            // SAFETY: the request failed at once: nothing refers to `mem`.
            drop(unsafe { Box::from_raw(mem) });
            panic!("IOCTL_AFD_POLL failed at once: {}", nt_error(status));
        }
        Poll { mem, status }
    }

    /// Waits up to `timeout` for `poll` to complete.
    fn complete(&self, poll: &Poll, timeout: Duration) -> Option<Done> {
        let mut entries = [OVERLAPPED_ENTRY::default(); 1];
        let n = self
            .port
            .get_many(&mut entries, Some(timeout))
            .expect("dequeue");
        if n == 0 {
            return None;
        }
        assert_eq!(
            entries[0].lpOverlapped as usize, poll.mem as usize,
            "a different packet came"
        );
        // SAFETY: its completion was dequeued: the kernel is done with it.
        let mem = unsafe { Box::from_raw(poll.mem) };
        Some(Done {
            status: status_of(&mem.0),
            events: if nt_success(status_of(&mem.0)) {
                mem.1.events()
            } else {
                0
            },
        })
    }

    fn expect(&self, poll: Poll) -> Done {
        let done = self.complete(&poll, PATIENCE);
        done.expect("the poll did not complete")
    }

    /// Whether anything at all arrives on the port within [`QUIET`].
    fn quiet(&self) -> bool {
        let mut entries = [OVERLAPPED_ENTRY::default(); 1];
        self.port
            .get_many(&mut entries, Some(QUIET))
            .expect("dequeue")
            == 0
    }

    fn cancel(&self, poll: &Poll) -> bool {
        // SAFETY: `poll.mem` is alive until its completion is dequeued.
        unsafe { cancel(self.afd.raw(), &raw const (*poll.mem).0) }.expect("cancel")
    }
}

fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn pair() -> (TcpStream, TcpStream) {
    let (l, a) = listener();
    let c = TcpStream::connect(a).unwrap();
    let (s, _) = l.accept().unwrap();
    c.set_nonblocking(true).unwrap();
    s.set_nonblocking(true).unwrap();
    (c, s)
}

fn nonblocking_connect(addr: SocketAddr) -> Socket {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_nonblocking(true).unwrap();
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => panic!("connect: {e}"),
    }
    s
}

const ALL: u32 = AFD_POLL_RECEIVE
    | AFD_POLL_RECEIVE_EXPEDITED
    | AFD_POLL_SEND
    | AFD_POLL_DISCONNECT
    | AFD_POLL_ABORT
    | AFD_POLL_LOCAL_CLOSE
    | AFD_POLL_CONNECT
    | AFD_POLL_ACCEPT
    | AFD_POLL_CONNECT_FAIL;

fn names(events: u32) -> String {
    let all = [
        (AFD_POLL_RECEIVE, "RECEIVE"),
        (AFD_POLL_RECEIVE_EXPEDITED, "RECEIVE_EXPEDITED"),
        (AFD_POLL_SEND, "SEND"),
        (AFD_POLL_DISCONNECT, "DISCONNECT"),
        (AFD_POLL_ABORT, "ABORT"),
        (AFD_POLL_LOCAL_CLOSE, "LOCAL_CLOSE"),
        (AFD_POLL_CONNECT, "CONNECT"),
        (AFD_POLL_ACCEPT, "ACCEPT"),
        (AFD_POLL_CONNECT_FAIL, "CONNECT_FAIL"),
    ];
    let v: Vec<&str> = all
        .iter()
        .filter(|(b, _)| events & b != 0)
        .map(|(_, n)| *n)
        .collect();
    format!("{events:#x} [{}]", v.join("|"))
}

#[test]
fn poll_info_has_the_drivers_layout() {
    // LARGE_INTEGER, two ULONGs, then {HANDLE, ULONG, NTSTATUS}: 16 + 32 on
    // 64-bit Windows, 12 + 32 (28 rounded up to the LARGE_INTEGER's
    // alignment of 8) on 32-bit.
    let handle = size_of::<HANDLE>();
    assert_eq!(size_of::<AfdPollHandleInfo>(), handle + 8);
    assert_eq!(size_of::<AfdPollInfo>(), 32);
    assert_eq!(std::mem::offset_of!(AfdPollInfo, handles), 16);
}

#[test]
fn status_codes_are_classified_by_severity() {
    use windows_sys::Win32::Foundation::{
        STATUS_BUFFER_OVERFLOW, STATUS_CANCELLED, STATUS_INVALID_HANDLE, STATUS_SUCCESS,
    };
    // Pending: a packet comes, skipping or not.
    assert_eq!(classify(STATUS_PENDING, false), Submitted::Queued);
    assert_eq!(classify(STATUS_PENDING, true), Submitted::Queued);
    // Success and informational codes: a packet unless the port is skipped.
    assert_eq!(classify(STATUS_SUCCESS, false), Submitted::Queued);
    assert_eq!(classify(STATUS_SUCCESS, true), Submitted::Inline);
    assert_eq!(classify(0x4000_0000, true), Submitted::Inline);
    // Warnings (severity 10) queue a packet even when success skips the port.
    assert!(!nt_success(STATUS_BUFFER_OVERFLOW));
    assert!(!nt_error_severity(STATUS_BUFFER_OVERFLOW));
    assert_eq!(classify(STATUS_BUFFER_OVERFLOW, false), Submitted::Queued);
    assert_eq!(classify(STATUS_BUFFER_OVERFLOW, true), Submitted::Queued);
    assert_eq!(
        classify(0xBFFF_FFFF_u32 as NTSTATUS, true),
        Submitted::Queued
    );
    // Errors (severity 11) queue nothing.
    assert_eq!(classify(STATUS_INVALID_HANDLE, false), Submitted::Failed);
    assert_eq!(classify(STATUS_CANCELLED, true), Submitted::Failed);
    assert_eq!(
        classify(0xC000_0000_u32 as NTSTATUS, false),
        Submitted::Failed
    );
}

#[test]
fn base_handle_of_a_plain_socket_is_found() {
    let (l, _) = listener();
    let base = base_socket(l.as_raw_socket()).expect("SIO_BASE_HANDLE");
    assert_ne!(base as usize, 0);
    // Asking again from the base gives the base.
    assert_eq!(base_socket(base as RawSocket).unwrap(), base);
}

#[test]
fn connect_to_a_closed_port_gives_connect_fail_only() {
    let rig = Rig::new();
    let (l, addr) = listener();
    drop(l);
    let s = nonblocking_connect(addr);
    let done = rig.expect(rig.poll(&s, ALL & !AFD_POLL_LOCAL_CLOSE));
    fact(
        "connect_to_a_closed_port_gives_connect_fail_only",
        done.events == AFD_POLL_CONNECT_FAIL,
        &format!("events {}", names(done.events)),
    );
}

#[test]
fn successful_connect_gives_connect_and_send() {
    let rig = Rig::new();
    let (_l, addr) = listener();
    let s = nonblocking_connect(addr);
    let done = rig.expect(rig.poll(&s, AFD_POLL_CONNECT | AFD_POLL_SEND | AFD_POLL_CONNECT_FAIL));
    fact(
        "successful_connect_gives_connect_and_send",
        done.events == AFD_POLL_CONNECT | AFD_POLL_SEND,
        &format!("events {}", names(done.events)),
    );
}

#[test]
fn polls_are_level_triggered_and_connect_stays_set() {
    let rig = Rig::new();
    let (c, _s) = pair();
    for round in 0..3 {
        let done = rig.expect(rig.poll(&c, AFD_POLL_CONNECT | AFD_POLL_SEND));
        fact(
            "polls_are_level_triggered_and_connect_stays_set",
            done.events & AFD_POLL_CONNECT != 0 && done.events & AFD_POLL_SEND != 0,
            &format!("round {round}: events {}", names(done.events)),
        );
    }
}

#[test]
fn arriving_data_gives_receive_until_drained() {
    let rig = Rig::new();
    let (mut c, mut s) = pair();
    let p = rig.poll(&s, AFD_POLL_RECEIVE);
    assert!(rig.quiet(), "RECEIVE reported before any data was sent");
    c.write_all(b"hello").unwrap();
    let done = rig
        .complete(&p, PATIENCE)
        .expect("no RECEIVE after data arrived");
    assert_eq!(
        done.events,
        AFD_POLL_RECEIVE,
        "events {}",
        names(done.events)
    );
    // Still readable: level-triggered.
    assert_eq!(
        rig.expect(rig.poll(&s, AFD_POLL_RECEIVE)).events,
        AFD_POLL_RECEIVE
    );
    let mut buf = [0; 16];
    assert_eq!(s.read(&mut buf).unwrap(), 5);
    let p = rig.poll(&s, AFD_POLL_RECEIVE);
    assert!(rig.quiet(), "RECEIVE still reported after draining");
    assert!(rig.cancel(&p));
    let done = rig.expect(p);
    assert!(is_cancelled(done.status));
}

#[test]
fn peer_close_gives_disconnect() {
    let rig = Rig::new();
    let (c, s) = pair();
    drop(c);
    let done = rig.expect(rig.poll(&s, AFD_POLL_RECEIVE | AFD_POLL_DISCONNECT | AFD_POLL_ABORT));
    fact(
        "peer_close_gives_disconnect",
        done.events & AFD_POLL_DISCONNECT != 0 && done.events & AFD_POLL_ABORT == 0,
        &format!("events {}", names(done.events)),
    );
}

#[test]
fn peer_shutdown_send_gives_disconnect() {
    let rig = Rig::new();
    let (c, s) = pair();
    c.shutdown(Shutdown::Write).unwrap();
    let done = rig.expect(rig.poll(&s, AFD_POLL_DISCONNECT | AFD_POLL_ABORT));
    fact(
        "peer_shutdown_send_gives_disconnect",
        done.events == AFD_POLL_DISCONNECT,
        &format!("events {}", names(done.events)),
    );
}

#[test]
fn abortive_peer_close_gives_abort_without_disconnect() {
    let rig = Rig::new();
    let (c, s) = pair();
    let c = Socket::from(c);
    c.set_linger(Some(Duration::ZERO)).unwrap();
    drop(c);
    let done = rig.expect(rig.poll(&s, AFD_POLL_DISCONNECT | AFD_POLL_ABORT));
    fact(
        "abortive_peer_close_gives_abort_without_disconnect",
        done.events == AFD_POLL_ABORT,
        &format!("events {}", names(done.events)),
    );
}

#[test]
fn one_oob_byte_gives_receive_expedited_not_receive() {
    let rig = Rig::new();
    let (c, s) = pair();
    let c = Socket::from(c);
    assert_eq!(c.send_out_of_band(b"!").unwrap(), 1);
    let done = rig.expect(rig.poll(&s, AFD_POLL_RECEIVE | AFD_POLL_RECEIVE_EXPEDITED));
    fact(
        "one_oob_byte_gives_receive_expedited_not_receive",
        done.events == AFD_POLL_RECEIVE_EXPEDITED,
        &format!("events {}", names(done.events)),
    );
}

#[test]
fn full_send_buffer_leaves_send_pending_until_the_peer_drains() {
    let rig = Rig::new();
    let (c, s) = pair();
    let (c, mut s) = (Socket::from(c), s);
    c.set_send_buffer_size(4096).unwrap();
    socket2::SockRef::from(&s)
        .set_recv_buffer_size(4096)
        .unwrap();
    let chunk = [7u8; 4096];
    let mut sent = 0usize;
    loop {
        match c.send(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("send: {e}"),
        }
        assert!(sent < 64 << 20, "the send buffer never filled");
    }
    let p = rig.poll(&c, AFD_POLL_SEND);
    assert!(rig.quiet(), "SEND reported with a full send buffer");
    // Drain everything the peer can read.
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    let mut done = None;
    while done.is_none() && got < sent {
        match s.read(&mut buf) {
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                done = rig.complete(&p, Duration::from_millis(50));
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    let done = match done {
        Some(d) => d,
        None => rig
            .complete(&p, PATIENCE)
            .expect("SEND never reported after draining"),
    };
    assert_eq!(done.events, AFD_POLL_SEND, "events {}", names(done.events));
}

#[test]
fn local_close_completes_a_pending_poll_with_local_close() {
    let rig = Rig::new();
    let (c, s) = pair();
    let p = rig.poll(&s, AFD_POLL_RECEIVE | AFD_POLL_LOCAL_CLOSE);
    assert!(rig.quiet());
    drop(s);
    let done = rig.complete(&p, PATIENCE);
    let detail = format!("{done:?}");
    let events = done.map_or(0, |d| d.events);
    fact(
        "local_close_completes_a_pending_poll_with_local_close",
        events == AFD_POLL_LOCAL_CLOSE,
        &format!("completion {detail}: events {}", names(events)),
    );
    drop(c);
}

#[test]
fn listener_reports_accept() {
    let rig = Rig::new();
    let (l, addr) = listener();
    let p = rig.poll(&l, AFD_POLL_ACCEPT);
    assert!(rig.quiet(), "ACCEPT reported with no connection");
    let _c = TcpStream::connect(addr).unwrap();
    let done = rig.complete(&p, PATIENCE).expect("no ACCEPT");
    assert_eq!(
        done.events,
        AFD_POLL_ACCEPT,
        "events {}",
        names(done.events)
    );
}

#[test]
fn cancel_gives_one_cancelled_completion_and_no_events() {
    let rig = Rig::new();
    let (_c, s) = pair();
    let p = rig.poll(&s, AFD_POLL_RECEIVE);
    assert_eq!(p.status, STATUS_PENDING);
    assert!(rig.cancel(&p), "nothing to cancel");
    let done = rig.expect(p);
    assert!(is_cancelled(done.status), "status {:#x}", done.status);
    assert_eq!(done.events, 0);
    assert!(rig.quiet(), "a second packet came after the cancellation");
}

#[test]
fn skip_completion_port_on_success_returns_synchronously() {
    let port = CompletionPort::new().unwrap();
    let afd = Afd::open().unwrap();
    port.associate(afd.raw(), 0).unwrap();
    set_completion_modes(afd.raw(), true).unwrap();
    let rig = Rig { port, afd };
    let (c, _s) = pair();
    // Writable at once: the poll is satisfied before it can pend.
    let p = rig.poll(&c, AFD_POLL_SEND);
    let sync = nt_success(p.status) && p.status != STATUS_PENDING;
    let quiet = rig.quiet();
    if sync && quiet {
        // SAFETY: completed synchronously and no packet was queued: the
        // kernel is done with the memory.
        let mem = unsafe { Box::from_raw(p.mem) };
        assert_eq!(mem.1.events(), AFD_POLL_SEND);
    }
    // Otherwise the memory is left to the kernel (leaked), never freed early.
    fact(
        "skip_completion_port_on_success_returns_synchronously",
        sync && quiet,
        &format!("synchronous success: {sync}, nothing queued: {quiet}"),
    );
}

#[test]
fn udp_is_send_ready_once_bound_and_receive_ready_on_a_datagram() {
    let rig = Rig::new();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let done = rig.expect(rig.poll(&a, AFD_POLL_SEND | AFD_POLL_RECEIVE));
    assert_eq!(done.events, AFD_POLL_SEND, "events {}", names(done.events));
    let p = rig.poll(&a, AFD_POLL_RECEIVE);
    assert!(rig.quiet(), "RECEIVE with no datagram");
    b.send_to(b"x", a.local_addr().unwrap()).unwrap();
    let done = rig
        .complete(&p, PATIENCE)
        .expect("no RECEIVE for a datagram");
    assert_eq!(
        done.events,
        AFD_POLL_RECEIVE,
        "events {}",
        names(done.events)
    );
}

#[test]
fn direct_poll_on_the_base_handle_completes_through_its_port() {
    let port = CompletionPort::new().unwrap();
    let (mut c, s) = pair();
    let base = base_socket(s.as_raw_socket()).unwrap();
    port.associate(base as HANDLE, 0).unwrap();
    let rig = Rig {
        port,
        afd: Afd::open().unwrap(),
    };
    let p = rig.poll_on(base as HANDLE, &s, AFD_POLL_RECEIVE);
    assert!(rig.quiet());
    c.write_all(b"x").unwrap();
    let done = rig
        .complete(&p, PATIENCE)
        .expect("no completion on the base handle");
    assert_eq!(
        done.events,
        AFD_POLL_RECEIVE,
        "events {}",
        names(done.events)
    );
    // A socket has one port for life.
    let other = CompletionPort::new().unwrap();
    let e = other.associate(base as HANDLE, 0).unwrap_err();
    assert!(is_already_associated(&e), "{e}");
}

/// Submits an exclusive poll for `events` on `handle` (the rig's AFD handle
/// or a base handle associated with the rig's port).
fn poll_exclusive(handle: HANDLE, socket: &impl AsRawSocket, events: u32) -> Poll {
    let base = base_socket(socket.as_raw_socket()).expect("base handle");
    let mem = Box::into_raw(Box::new((
        status_block(),
        AfdPollInfo::new(base, events, true),
    )));
    // SAFETY: `mem` is only reclaimed after its completion is dequeued.
    let status = unsafe { poll(handle, &raw mut (*mem).1, &raw mut (*mem).0, mem.cast()) };
    assert!(
        nt_success(status),
        "exclusive poll failed at once: {}",
        nt_error(status)
    );
    Poll { mem, status }
}

#[test]
fn an_exclusive_poll_completes_the_previous_exclusive_poll_at_once() {
    for direct in [false, true] {
        let (mut c, s) = pair();
        let rig = Rig::new();
        let handle = if direct {
            let base = base_socket(s.as_raw_socket()).unwrap();
            rig.port.associate(base as HANDLE, 0).unwrap();
            base as HANDLE
        } else {
            rig.afd.raw()
        };
        let first = poll_exclusive(handle, &s, AFD_POLL_RECEIVE);
        assert!(rig.quiet(), "direct={direct}: RECEIVE with no data");
        let second = poll_exclusive(handle, &s, AFD_POLL_RECEIVE);
        // The first comes back at once, reporting nothing; the second stays.
        let done = rig
            .complete(&first, PATIENCE)
            .expect("the replaced exclusive poll never completed");
        fact(
            "an_exclusive_poll_completes_the_previous_exclusive_poll_at_once",
            done.events == 0,
            &format!("direct={direct}: replaced poll: {done:?}"),
        );
        assert!(
            rig.quiet(),
            "direct={direct}: the new poll completed without data"
        );
        c.write_all(b"x").unwrap();
        let done = rig.complete(&second, PATIENCE).expect("no RECEIVE");
        assert_eq!(
            done.events,
            AFD_POLL_RECEIVE,
            "direct={direct}: {}",
            names(done.events)
        );
    }
}

#[test]
fn a_shut_down_sending_side_is_told() {
    let (c, s) = pair();
    assert!(!send_shut_down(c.as_raw_socket(), true), "an open socket");
    c.shutdown(Shutdown::Write).unwrap();
    fact(
        "a_shut_down_sending_side_is_told",
        send_shut_down(c.as_raw_socket(), true),
        "neither SIO_TCP_INFO nor a zero-length send told shutdown(Write)",
    );
    // Shutting down receives only does not count, and UDP is never probed.
    s.shutdown(Shutdown::Read).unwrap();
    assert!(!send_shut_down(s.as_raw_socket(), true));
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(!send_shut_down(u.as_raw_socket(), true));
}

#[test]
fn tcp_state_is_answered() {
    let (_c, s) = pair();
    let state = tcp_state(s.as_raw_socket());
    fact(
        "tcp_state_is_answered",
        state.is_ok(),
        &format!("SIO_TCP_INFO: {state:?}"),
    );
}

#[test]
fn the_protocol_catalog_can_be_listed() {
    // Checked here, where other tests may have started Winsock already; the
    // function starts it itself (a poller may come before any socket).
    let ifs = providers_are_ifs().expect("WSAEnumProtocolsW");
    println!("every TCP/UDP provider is an IFS provider: {ifs}");
    if is_wine() {
        assert!(ifs, "Wine's providers are IFS providers");
    }
}

#[test]
fn a_closed_handle_is_not_a_socket() {
    let (_c, s) = pair();
    let raw = s.as_raw_socket();
    assert!(is_socket(raw));
    drop(s);
    fact(
        "a_closed_handle_is_not_a_socket",
        !is_socket(raw),
        "getsockopt(SO_TYPE) succeeded on a closed handle",
    );
}

#[test]
fn base_handle_of_a_closed_socket_fails() {
    let (_c, s) = pair();
    let raw = s.as_raw_socket();
    drop(s);
    let result = base_socket(raw);
    fact(
        "base_handle_of_a_closed_socket_fails",
        result.is_err(),
        &format!("SIO_BASE_HANDLE on a closed handle: {result:?}"),
    );
}

#[test]
fn completion_modes_can_be_read_back() {
    let rig = Rig::new();
    let flags = completion_modes(rig.afd.raw()).expect("query completion modes");
    assert_eq!(
        flags & 0x2,
        0x2,
        "FILE_SKIP_SET_EVENT_ON_HANDLE was set: {flags:#x}"
    );
    assert!(!skips_port(flags));
    let afd = Afd::open().unwrap();
    rig.port.associate(afd.raw(), 0).unwrap();
    set_completion_modes(afd.raw(), true).unwrap();
    assert!(skips_port(completion_modes(afd.raw()).unwrap()));
}

#[test]
fn the_process_handle_table_lists_our_handles() {
    let extra = Afd::open().unwrap();
    let value = extra.raw() as usize;
    let during = process_handles().expect("list handles");
    assert!(
        during.contains(&value),
        "{value:#x} not among {} handles",
        during.len()
    );
    // (That it goes away again is checked where nothing runs in parallel:
    // the handle-leak test, which has a binary of its own.)
    drop(extra);
}

/// A poll whose issuing thread exits stays pending (Windows since Vista: I/O
/// on a handle associated with a completion port is not cancelled at thread
/// exit) and completes with its result when the event comes. Checked with
/// the data sent while the thread exits, over many rounds. Under Wine a poll
/// that completes in that window is queued with its status block still
/// `STATUS_PENDING` and its reply untouched (the request's own mask): the
/// listed difference, whose exact shape is pinned here too, because the
/// poller relies on it (`result_lost`).
#[test]
fn a_poll_whose_thread_exits_stays_pending() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let rig = Rig::new();
    let mask = AFD_POLL_RECEIVE | AFD_POLL_LOCAL_CLOSE;
    let mut lost = 0;
    for round in 0..200u64 {
        let (mut c, s) = pair();
        let issued = AtomicBool::new(false);
        let (mem, status) = std::thread::scope(|sc| {
            let thread = sc.spawn(|| {
                let p = rig.poll(&s, mask);
                issued.store(true, Ordering::Release);
                (p.mem as usize, p.status)
            });
            while !issued.load(Ordering::Acquire) && !thread.is_finished() {
                std::hint::spin_loop();
            }
            // Spread the rounds over the thread's exit; no condition of the
            // outcome.
            let start = Instant::now();
            while start.elapsed() < Duration::from_micros(round % 10 * 10) {
                std::hint::spin_loop();
            }
            c.write_all(b"x").unwrap();
            thread.join().expect("the polling thread panicked")
        });
        assert_eq!(status, STATUS_PENDING, "no data was there: pending");
        let p = Poll {
            mem: mem as *mut _,
            status,
        };
        let done = rig
            .complete(&p, PATIENCE)
            .expect("the poll did not complete");
        if done.status == STATUS_PENDING {
            assert_eq!(
                done.events,
                mask,
                "a lost result leaves the request in the reply: {}",
                names(done.events)
            );
            lost += 1;
        } else {
            assert_eq!(done.status, 0, "status {:#x}", done.status);
            assert_eq!(
                done.events,
                AFD_POLL_RECEIVE,
                "events {}",
                names(done.events)
            );
        }
    }
    fact(
        "a_poll_whose_thread_exits_stays_pending",
        lost == 0,
        &format!("{lost} of 200 completions with the status block still STATUS_PENDING"),
    );
}
