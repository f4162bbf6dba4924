//! Helpers shared by the integration tests.
//!
//! Portable on purpose: only `std::net` and `socket2`, so the same tests run
//! on every OS and backend. The backend comes from `READINESS_TEST_BACKEND`
//! (`epoll`, `poll`, `kqueue`, `afd`, `direct`); without it, `Poller::new()`.
//!
//! Timing: waiting *for* an event uses [`LONG`] and loops, so a slow machine
//! only makes a passing test slower; checking the *absence* of events uses
//! [`SHORT`], which can only let a bug through, never fail a correct backend.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::ops::{BitOr, Not};
use std::time::{Duration, Instant};

use readiness::{Backend, Event, Events, Poller};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How long to wait for an event that should come.
pub const LONG: Duration = Duration::from_secs(10);
/// How long to watch for an event that should not come.
pub const SHORT: Duration = Duration::from_millis(150);

/// The backend named by `READINESS_TEST_BACKEND`, if set.
pub fn backend_from_env() -> Option<Backend> {
    let name = std::env::var("READINESS_TEST_BACKEND").ok()?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    match Backend::from_name(name) {
        Some(backend) => Some(backend),
        None => panic!(
            "READINESS_TEST_BACKEND={name:?} names no backend \
             (expected one of epoll, poll, kqueue, afd, direct)"
        ),
    }
}

/// A poller on the backend under test.
pub fn poller() -> Poller {
    let result = match backend_from_env() {
        Some(backend) => Poller::with_backend(backend),
        None => Poller::new(),
    };
    match result {
        Ok(poller) => {
            if let Some(backend) = backend_from_env() {
                assert_eq!(
                    poller.backend(),
                    backend,
                    "poller built on the wrong backend"
                );
            }
            poller
        }
        Err(e) => panic!("cannot create a poller ({:?}): {e}", backend_from_env()),
    }
}

/// A listener on 127.0.0.1 with an OS-chosen port, blocking.
pub fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a TCP listener on 127.0.0.1")
}

/// A connected pair `(client, server)` on 127.0.0.1, both non-blocking.
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = listener();
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    for s in [&client, &server] {
        s.set_nonblocking(true).unwrap();
        s.set_nodelay(true).unwrap();
    }
    (client, server)
}

/// A non-blocking UDP socket bound to 127.0.0.1 with an OS-chosen port.
///
/// The ephemeral ports are shared by the whole machine: when other test runs
/// hold most of them (the 10,000-socket test, run concurrently on several
/// backends), binding fails with `AddrInUse` for a while; wait that out.
pub fn udp_socket() -> UdpSocket {
    let deadline = Instant::now() + LONG;
    let socket = loop {
        match UdpSocket::bind("127.0.0.1:0") {
            Ok(socket) => break socket,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("bind a UDP socket on 127.0.0.1: {e}"),
        }
    };
    socket.set_nonblocking(true).unwrap();
    socket
}

/// An address on 127.0.0.1 where nothing listens (a port just released).
pub fn closed_port() -> SocketAddr {
    let listener = listener();
    listener.local_addr().unwrap()
}

/// Starts a non-blocking connect to `addr`; the stream is not connected yet.
pub fn connect_nonblocking(addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .expect("create a TCP socket");
    socket.set_nonblocking(true).unwrap();
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        // Windows says WouldBlock; Unix says EINPROGRESS, whose ErrorKind
        // (`InProgress`) cannot be named on stable Rust.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) if format!("{:?}", e.kind()) == "InProgress" => {}
        Err(e) => panic!("non-blocking connect to {addr} failed at once: {e}"),
    }
    TcpStream::from(socket)
}

/// Closes `stream` abortively: the peer receives a reset (RST), not a FIN.
pub fn reset(stream: TcpStream) {
    let socket = Socket::from(stream);
    socket.set_linger(Some(Duration::ZERO)).unwrap();
    drop(socket);
}

/// Writes all of `data` to a non-blocking stream (small writes never block
/// on a fresh loopback connection, but be exact about it).
pub fn send(mut stream: &TcpStream, data: &[u8]) {
    let deadline = Instant::now() + LONG;
    let mut done = 0;
    while done < data.len() {
        match stream.write(&data[done..]) {
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
}

/// Reads everything a non-blocking stream holds now; returns the byte count.
/// Panics on an error other than `WouldBlock`.
pub fn drain(mut stream: &TcpStream) -> usize {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// A description of event flags: the ones that must be set, the ones that
/// must be clear, the rest free. Build with the constants, `|` and `!`:
/// `READABLE | !ERROR`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    on: u8,
    off: u8,
}

const NAMES: [&str; 6] = [
    "readable",
    "writable",
    "priority",
    "read_closed",
    "write_closed",
    "error",
];

const fn flag(i: u8) -> Flags {
    Flags { on: 1 << i, off: 0 }
}

/// Any event for the key.
pub const ANY: Flags = Flags { on: 0, off: 0 };
pub const READABLE: Flags = flag(0);
pub const WRITABLE: Flags = flag(1);
pub const PRIORITY: Flags = flag(2);
pub const READ_CLOSED: Flags = flag(3);
pub const WRITE_CLOSED: Flags = flag(4);
pub const ERROR: Flags = flag(5);

/// The flags of `event` as a bit set in [`Flags`]' order.
pub fn bits(event: &Event) -> u8 {
    [
        event.is_readable(),
        event.is_writable(),
        event.is_priority(),
        event.is_read_closed(),
        event.is_write_closed(),
        event.is_error(),
    ]
    .iter()
    .enumerate()
    .fold(0, |acc, (i, &on)| acc | (u8::from(on) << i))
}

impl Flags {
    /// Whether `event` has every required flag and no forbidden one.
    pub fn matches(self, event: &Event) -> bool {
        let b = bits(event);
        b & self.on == self.on && b & self.off == 0
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        let f = Flags {
            on: self.on | rhs.on,
            off: self.off | rhs.off,
        };
        assert!(f.on & f.off == 0, "contradictory flags: {f:?}");
        f
    }
}

impl Not for Flags {
    type Output = Flags;
    fn not(self) -> Flags {
        Flags {
            on: self.off,
            off: self.on,
        }
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.on == 0 && self.off == 0 {
            return f.write_str("any");
        }
        let mut parts = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            if self.on & (1 << i) != 0 {
                parts.push(name.to_string());
            }
            if self.off & (1 << i) != 0 {
                parts.push(format!("!{name}"));
            }
        }
        f.write_str(&parts.join(" | "))
    }
}

/// One wait of up to [`LONG`] that must return at least one event (a
/// notification does not count: it waits on). Returns the events.
pub fn wait_some(poller: &Poller, events: &mut Events) -> Vec<Event> {
    let deadline = Instant::now() + LONG;
    loop {
        let n = poller
            .wait_deadline(events, Some(deadline))
            .expect("wait failed");
        assert_eq!(n, events.len(), "wait returned a count unlike the buffer");
        if n > 0 {
            return events.iter().copied().collect();
        }
        assert!(
            Instant::now() < deadline,
            "no event within {LONG:?} on {:?}",
            poller.backend()
        );
    }
}

/// Waits (up to [`LONG`] in all) until, for each `(key, flags)` of `expected`,
/// an event for `key` matching `flags` was returned. An event for a key not
/// in `expected` fails at once. Returns every event seen, in order.
#[track_caller]
pub fn expect_events(
    poller: &Poller,
    events: &mut Events,
    expected: &[(usize, Flags)],
) -> Vec<Event> {
    let deadline = Instant::now() + LONG;
    let mut met = vec![false; expected.len()];
    let mut seen = Vec::new();
    loop {
        let n = poller
            .wait_deadline(events, Some(deadline))
            .expect("wait failed");
        assert_eq!(n, events.len(), "wait returned a count unlike the buffer");
        for event in events.iter() {
            seen.push(*event);
            let mut known = false;
            for (i, (key, flags)) in expected.iter().enumerate() {
                if *key == event.key() {
                    known = true;
                    met[i] |= flags.matches(event);
                }
            }
            if !known {
                panic!(
                    "unexpected event {event:?}\n{}",
                    report(poller, expected, &met, &seen)
                );
            }
        }
        if met.iter().all(|&m| m) {
            return seen;
        }
        if Instant::now() >= deadline {
            panic!(
                "expected events missing after {LONG:?}\n{}",
                report(poller, expected, &met, &seen)
            );
        }
    }
}

/// Like [`expect_events`] for one key; returns the first matching event.
#[track_caller]
pub fn expect_event(poller: &Poller, events: &mut Events, key: usize, flags: Flags) -> Event {
    let seen = expect_events(poller, events, &[(key, flags)]);
    *seen.iter().find(|e| flags.matches(e)).unwrap()
}

fn report(poller: &Poller, expected: &[(usize, Flags)], met: &[bool], seen: &[Event]) -> String {
    let mut s = format!("backend: {}\nexpected:\n", poller.backend());
    for ((key, flags), met) in expected.iter().zip(met) {
        let mark = if *met { "ok     " } else { "MISSING" };
        s += &format!("  {mark} key {key}: {flags:?}\n");
    }
    s += "seen:\n";
    if seen.is_empty() {
        s += "  (nothing)\n";
    }
    for event in seen {
        s += &format!("  {event:?}\n");
    }
    s
}

/// Watches for `dur`: no wait may return an event. Notifications are fine.
#[track_caller]
pub fn expect_none(poller: &Poller, events: &mut Events, dur: Duration) {
    let deadline = Instant::now() + dur;
    loop {
        let n = poller
            .wait_deadline(events, Some(deadline))
            .expect("wait failed");
        assert!(
            n == 0 && events.is_empty(),
            "expected no event on {}, got {:?}",
            poller.backend(),
            events
        );
        if Instant::now() >= deadline {
            return;
        }
    }
}

/// Asserts that `result` failed with `kind`.
#[track_caller]
pub fn assert_err<T: fmt::Debug>(result: io::Result<T>, kind: io::ErrorKind) {
    match result {
        Err(e) => assert_eq!(e.kind(), kind, "wrong error: {e}"),
        Ok(v) => panic!("expected an error of kind {kind:?}, got Ok({v:?})"),
    }
}
