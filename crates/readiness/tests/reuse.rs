//! Closing a registered source without `delete`, then a new source that gets
//! the same descriptor number or handle value: what `add`, `modify` and
//! `delete` answer, and which keys are reported (docs/ARCHITECTURE.md,
//! "Closing a source without deleting it"). Portable: run on every backend.
//!
//! Each scenario registers a socket under [`OLD`], puts the registration in
//! one state (armed oneshot, fired oneshot, level, interest `NONE`, after a
//! `modify` that changed the interest; each also with readiness that arrived
//! and was not waited for), closes the socket without `delete`, then creates
//! sockets until one has the same value, and checks that:
//!
//! - `add` of the new socket succeeds, it is reported under [`NEW`], and
//!   [`OLD`] is never reported again;
//! - `modify` and `delete` of the new socket before any `add` fail with
//!   `NotFound`, and a later `add` works as above. Windows, where the
//!   poller cannot tell the value's stale registration from the new socket
//!   (see [`stale_may_take_calls`] and docs/WINDOWS.md), may instead let the
//!   stale registration take the call; the test then checks that it watches
//!   the new socket under the key given, and says so on its output.
//!
//! On Unix the lowest free descriptor number is the next one allocated, so
//! the number comes back at once (the tests of this binary run one at a
//! time, see [`serial`], so no other test takes it). Windows hands out
//! handle values its own way: the tests create up to [`TRIES`] sockets until
//! the value repeats, and print that the scenario was not exercised if it
//! never does.

mod util;

use std::io::{ErrorKind, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::{Mutex, MutexGuard, PoisonError};

use readiness::{AsSource, Events, Interest, Mode, Poller};

use util::*;

const OLD: usize = 1;
const NEW: usize = 2;
/// Sockets created at most to get a value back.
const TRIES: usize = 2_000;

/// One scenario at a time: creating sockets in parallel would take the
/// freed value.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The descriptor number or handle value of `source`.
fn value(source: &(impl AsSource + ?Sized)) -> u64 {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        source.as_fd().as_raw_fd() as u64
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsRawSocket;
        // `RawSocket` is `u64` on 64-bit Windows, `u32` on 32-bit.
        #[allow(clippy::unnecessary_cast)]
        let value = source.as_socket().as_raw_socket() as u64;
        value
    }
}

/// A UDP socket whose value is `wanted`, or `None` if none came within
/// [`TRIES`] (the others created on the way are closed).
fn socket_with_value(wanted: u64) -> Option<UdpSocket> {
    let mut others = Vec::new();
    for _ in 0..TRIES {
        let socket = udp_socket();
        if value(&socket) == wanted {
            return Some(socket);
        }
        others.push(socket);
    }
    None
}

/// Makes `socket` readable: one datagram from a fresh sender.
fn make_readable(socket: &UdpSocket) {
    let sender = udp_socket();
    sender
        .send_to(b"new", socket.local_addr().unwrap())
        .expect("send a datagram");
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Oneshot, readable interest, not fired.
    ArmedOneshot,
    /// Oneshot that fired and was reported: disarmed.
    FiredOneshot,
    /// Level-triggered readable (oneshot where the backend has no level).
    Level,
    /// Registered with interest `NONE`.
    InterestNone,
    /// Added writable, fired, then modified to readable: armed again, with
    /// another interest.
    ModifiedInterest,
}

/// Registers `server` under [`OLD`] in `state`; with `queued`, readiness
/// arrives on it afterwards (data from `client`) and is not waited for.
fn prepare(
    poller: &Poller,
    events: &mut Events,
    client: &TcpStream,
    server: &TcpStream,
    state: State,
    queued: bool,
) {
    match state {
        State::ArmedOneshot => poller
            .add(server, OLD, Interest::READABLE, Mode::Oneshot)
            .unwrap(),
        State::FiredOneshot => {
            poller
                .add(server, OLD, Interest::READABLE, Mode::Oneshot)
                .unwrap();
            send(client, b"a");
            expect_event(poller, events, OLD, READABLE);
        }
        State::Level => {
            let mode = if poller.supports_level() {
                Mode::Level
            } else {
                Mode::Oneshot
            };
            poller.add(server, OLD, Interest::READABLE, mode).unwrap();
            if mode == Mode::Level {
                // Reported, and still ready: reported again next wait.
                send(client, b"a");
                expect_event(poller, events, OLD, READABLE);
            }
        }
        State::InterestNone => poller
            .add(server, OLD, Interest::NONE, Mode::Oneshot)
            .unwrap(),
        State::ModifiedInterest => {
            poller
                .add(server, OLD, Interest::WRITABLE, Mode::Oneshot)
                .unwrap();
            expect_event(poller, events, OLD, WRITABLE);
            poller
                .modify(server, OLD, Interest::READABLE, Mode::Oneshot)
                .unwrap();
        }
    }
    if queued {
        send(client, b"queued");
        await_data(server);
    }
}

/// Blocks until `server` has data to read (without reading it).
fn await_data(server: &TcpStream) {
    let deadline = std::time::Instant::now() + LONG;
    while !matches!(server.peek(&mut [0u8; 1]), Ok(1..)) {
        assert!(std::time::Instant::now() < deadline, "data never arrived");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The new socket is reported under [`NEW`] only, and [`OLD`] stays quiet
/// (any event for [`OLD`] fails `expect_event` and `expect_none`).
fn check_new_is_reported(poller: &Poller, events: &mut Events, new: &UdpSocket) {
    make_readable(new);
    expect_event(poller, events, NEW, READABLE);
    expect_none(poller, events, SHORT);
    // Re-armed, the new socket is still reported under its own key.
    poller
        .modify(new, NEW, Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_event(poller, events, NEW, READABLE);
    expect_none(poller, events, SHORT);
    poller.delete(new).unwrap();
}

/// Prepares, closes without delete, and returns the socket that reuses the
/// value, with the old connection's client (kept open) — or `None` when the
/// value never came back (Windows only; Unix must reuse it).
fn close_and_reuse(
    poller: &Poller,
    events: &mut Events,
    state: State,
    queued: bool,
) -> Option<(UdpSocket, TcpStream)> {
    let (client, server) = tcp_pair();
    prepare(poller, events, &client, &server, state, queued);
    let old = value(&server);
    drop(server); // no delete
    match socket_with_value(old) {
        Some(new) => Some((new, client)),
        None if cfg!(windows) => {
            println!(
                "NOT EXERCISED ({state:?}, queued {queued}): no socket got the \
                 handle value {old:#x} back within {TRIES} sockets"
            );
            None
        }
        None => panic!("descriptor {old} was not reused within {TRIES} sockets"),
    }
}

/// `add` of the new socket works, and only its key is reported.
fn add_after_reuse(state: State, queued: bool) {
    let _serial = serial();
    let poller = poller();
    let mut events = Events::new();
    let Some((new, client)) = close_and_reuse(&poller, &mut events, state, queued) else {
        return;
    };
    if let Err(e) = poller.add(&new, NEW, Interest::READABLE, Mode::Oneshot) {
        panic!(
            "{} ({state:?}, queued {queued}): add of a socket reusing the value of \
             a closed registration failed: {e} ({:?})",
            poller.backend(),
            e.kind()
        );
    }
    check_new_is_reported(&poller, &mut events, &new);
    // The old connection's peer acting up changes nothing either (the
    // write may fail: the closed end answers with a reset).
    let _ = (&client).write(b"more");
    drop(client);
    expect_none(&poller, &mut events, SHORT);
}

/// `modify` and `delete` of the new socket, never added, fail with
/// `NotFound`; then `add` works.
fn modify_delete_after_reuse(state: State, queued: bool) {
    let _serial = serial();
    let poller = poller();
    let mut events = Events::new();
    let Some((new, _client)) = close_and_reuse(&poller, &mut events, state, queued) else {
        return;
    };
    let backend = poller.backend();
    let r = poller.modify(&new, NEW, Interest::READABLE, Mode::Oneshot);
    if r.is_ok() && stale_may_take_calls(backend, state, queued) {
        // Windows, documented (docs/WINDOWS.md, "Closing a socket without
        // `delete`, and handle reuse"): no poll of the old registration was
        // in the kernel when its socket closed (or, on Windows itself, its
        // close is not visible before a dequeue), so the poller cannot tell
        // the new socket from the old one; the stale registration takes the
        // call and now watches the new socket, under the key given.
        println!(
            "WINDOWS (documented): {backend} ({state:?}, queued {queued}): modify of a \
             never-added socket on a stale registration's value acted on that registration"
        );
        make_readable(&new);
        expect_event(&poller, &mut events, NEW, READABLE);
        expect_none(&poller, &mut events, SHORT);
        poller.delete(&new).unwrap();
        assert_err(poller.delete(&new), ErrorKind::NotFound);
    } else {
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::NotFound),
            "{backend} ({state:?}, queued {queued}): modify of a never-added socket \
             that reuses a closed registration's value: {r:?}, expected NotFound"
        );
        let r = poller.delete(&new);
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::NotFound),
            "{backend} ({state:?}, queued {queued}): delete of a never-added socket \
             that reuses a closed registration's value: {r:?}, expected NotFound"
        );
    }
    expect_none(&poller, &mut events, SHORT);
    poller
        .add(&new, NEW, Interest::READABLE, Mode::Oneshot)
        .unwrap_or_else(|e| panic!("{backend} ({state:?}): add after NotFound: {e}"));
    check_new_is_reported(&poller, &mut events, &new);
}

/// Whether, on this backend, a registration in `state` closed without
/// `delete` may take a `modify` or `delete` of a never-added socket on its
/// value (docs/WINDOWS.md): on Windows when no poll of it was in the kernel
/// at the close (a fired oneshot, a level registration between a report and
/// the next wait, or readiness that had completed its poll), and on Windows
/// itself (not Wine) in every state, because a close is visible there only
/// once its completion is dequeued. Under Wine the status block is written
/// when a poll completes, so the other states must answer `NotFound`: the
/// test checks that reading.
fn stale_may_take_calls(backend: readiness::Backend, state: State, queued: bool) -> bool {
    use readiness::Backend;
    if !matches!(backend, Backend::Afd | Backend::AfdDirect) {
        return false;
    }
    #[cfg(windows)]
    if !readiness::os::windows::running_under_wine() {
        return true;
    }
    // Level is oneshot on afd-direct (no level mode there).
    let level = state == State::Level && backend == Backend::Afd;
    queued || state == State::FiredOneshot || level
}

macro_rules! scenarios {
    ($($name:ident: $state:ident, $queued:expr;)+) => {
        mod add_after_close_and_reuse {
            use super::*;
            $(#[test] fn $name() { add_after_reuse(State::$state, $queued) })+
        }
        mod modify_delete_after_close_and_reuse {
            use super::*;
            $(#[test] fn $name() { modify_delete_after_reuse(State::$state, $queued) })+
        }
    };
}

scenarios! {
    armed_oneshot: ArmedOneshot, false;
    armed_oneshot_event_queued: ArmedOneshot, true;
    fired_oneshot: FiredOneshot, false;
    fired_oneshot_data_queued: FiredOneshot, true;
    level: Level, false;
    level_event_queued: Level, true;
    interest_none: InterestNone, false;
    interest_none_data_queued: InterestNone, true;
    modified_interest: ModifiedInterest, false;
    modified_interest_event_queued: ModifiedInterest, true;
}

/// A registered descriptor duplicated, then the original closed: what each
/// Unix backend does (docs/ARCHITECTURE.md, "Closing a source without
/// deleting it").
///
/// - epoll: the registration belongs to the open file description and the
///   number it was added with. It lives on while the duplicate is open and
///   keeps reporting under the old key; `delete` of the duplicate is
///   `NotFound` (nothing can delete it); adding the duplicate makes a second
///   registration; closing the last descriptor ends both.
/// - poll(2): registrations are per descriptor number; the closed number is
///   dropped at the next wait, whatever duplicates exist. The duplicate is
///   not registered (`NotFound`) and can be added.
#[cfg(unix)]
#[test]
fn duplicated_then_closed_descriptor() {
    use readiness::Backend;

    let _serial = serial();
    let poller = poller();
    let mut events = Events::new();
    let (client, server) = tcp_pair();
    poller
        .add(&server, OLD, Interest::READABLE, Mode::Level)
        .unwrap();
    let dup = server.try_clone().unwrap();
    drop(server);
    send(&client, b"a");
    match poller.backend() {
        Backend::Epoll => {
            // Still reported, under the old key, on every wait.
            for _ in 0..3 {
                expect_event(&poller, &mut events, OLD, READABLE);
            }
            assert_err(poller.delete(&dup), ErrorKind::NotFound);
            assert_err(
                poller.modify(&dup, NEW, Interest::READABLE, Mode::Oneshot),
                ErrorKind::NotFound,
            );
            poller
                .add(&dup, NEW, Interest::READABLE, Mode::Oneshot)
                .unwrap();
            expect_events(&poller, &mut events, &[(OLD, READABLE), (NEW, READABLE)]);
            poller.delete(&dup).unwrap();
            // Only the old one is left, and still undeletable.
            expect_event(&poller, &mut events, OLD, READABLE);
            assert_err(poller.delete(&dup), ErrorKind::NotFound);
            // Closing the last descriptor of the file ends it.
            drop(dup);
            expect_none(&poller, &mut events, SHORT);
        }
        Backend::Poll => {
            // The closed number is dropped: nothing under the old key.
            expect_none(&poller, &mut events, SHORT);
            assert_err(poller.delete(&dup), ErrorKind::NotFound);
            poller
                .add(&dup, NEW, Interest::READABLE, Mode::Oneshot)
                .unwrap();
            expect_event(&poller, &mut events, NEW, READABLE);
            expect_none(&poller, &mut events, SHORT);
            poller.delete(&dup).unwrap();
        }
        other => println!("no pinned behaviour for {other}"),
    }
}
