//! `readiness explore`: the scenarios of the articles this project grew from,
//! run against one backend, with what the OS reported (the native bits of
//! each event) and what the portable API made of it.
//!
//! Every scenario is deterministic: it waits (generously) for the first event
//! of a oneshot registration, or watches a short while for the absence of
//! one, so its output is the same on every run on the same OS. That is what
//! lets docs/EVENTS.md be checked against a fresh run (`tests/events_doc.rs`).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use readiness::{Backend, Event, Events, Interest, Mode, Poller};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

/// How long to wait for an event that should come.
const LONG: Duration = Duration::from_secs(10);
/// How long to watch for an event that should not come.
const QUIET: Duration = Duration::from_millis(200);

/// One scenario and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// A short name (`connect-refused`, `data-arrives`, ...).
    pub scenario: &'static str,
    /// What the scenario does, in a few words.
    pub does: &'static str,
    /// What was seen: portable flags and native bits, or that nothing came.
    pub seen: String,
}

/// The scenarios, in order: (name, description, run).
type Run = fn(&Poller) -> io::Result<String>;
const SCENARIOS: &[(&str, &str, Run)] = &[
    (
        "connect-refused",
        "non-blocking connect to a closed port, WRITABLE",
        connect_refused,
    ),
    (
        "connect-ok",
        "non-blocking connect to a listener, WRITABLE",
        connect_ok,
    ),
    (
        "data-arrives",
        "the peer sends 5 bytes, READABLE",
        data_arrives,
    ),
    (
        "drained",
        "all read, re-armed READABLE, nothing new",
        drained,
    ),
    (
        "peer-shutdown",
        "the peer shuts down its sending side, READABLE",
        peer_shutdown,
    ),
    ("peer-close", "the peer closes, READABLE", peer_close),
    (
        "abortive-close",
        "the peer closes with linger 0 (RST), BOTH",
        abortive_close,
    ),
    (
        "oob-byte",
        "the peer sends one out-of-band byte, READABLE | PRIORITY",
        oob_byte,
    ),
    (
        "send-buffer-full",
        "send buffer filled, WRITABLE, nothing yet",
        send_buffer_full,
    ),
    (
        "send-buffer-drained",
        "the same, then the peer reads everything",
        send_buffer_drained,
    ),
    (
        "shut-both-ways",
        "the peer's FIN and our own shutdown(Write), BOTH",
        shut_both_ways,
    ),
    (
        "local-shutdown-read",
        "our own shutdown(Read), READABLE",
        local_shutdown_read,
    ),
    (
        "local-close",
        "our socket closed while registered (no delete), READABLE",
        local_close,
    ),
    (
        "listener-accept",
        "a connection arrives at a listener, READABLE",
        listener_accept,
    ),
    ("udp-writable", "a bound UDP socket, WRITABLE", udp_writable),
    ("udp-datagram", "a datagram arrives, READABLE", udp_datagram),
];

/// Runs every scenario on `backend`. A scenario that fails says so in its
/// outcome; only a poller that cannot be created is an error.
pub fn run(backend: Backend) -> io::Result<Vec<Outcome>> {
    // Check that the backend exists here before running anything.
    drop(Poller::with_backend(backend)?);
    let mut out = Vec::new();
    for &(scenario, does, run) in SCENARIOS {
        // A poller per scenario: nothing left over from the one before.
        let poller = Poller::with_backend(backend)?;
        let seen = run(&poller).unwrap_or_else(|e| format!("error: {e}"));
        out.push(Outcome {
            scenario,
            does,
            seen,
        });
    }
    Ok(out)
}

/// The portable flags of `event`, in a fixed order.
pub fn flags(event: &Event) -> String {
    let names = [
        (event.is_readable(), "readable"),
        (event.is_writable(), "writable"),
        (event.is_priority(), "priority"),
        (event.is_read_closed(), "read_closed"),
        (event.is_write_closed(), "write_closed"),
        (event.is_error(), "error"),
    ];
    let on: Vec<&str> = names
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
    if on.is_empty() {
        "(no flags)".into()
    } else {
        on.join(" ")
    }
}

/// The native bits of an event of `backend`, by name.
pub fn native(backend: Backend, bits: u32) -> String {
    const EPOLL: &[(u32, &str)] = &[
        (0x1, "EPOLLIN"),
        (0x2, "EPOLLPRI"),
        (0x4, "EPOLLOUT"),
        (0x8, "EPOLLERR"),
        (0x10, "EPOLLHUP"),
        (0x40, "EPOLLRDNORM"),
        (0x80, "EPOLLRDBAND"),
        (0x100, "EPOLLWRNORM"),
        (0x200, "EPOLLWRBAND"),
        (0x2000, "EPOLLRDHUP"),
    ];
    const POLL: &[(u32, &str)] = &[
        (0x1, "POLLIN"),
        (0x2, "POLLPRI"),
        (0x4, "POLLOUT"),
        (0x8, "POLLERR"),
        (0x10, "POLLHUP"),
        (0x20, "POLLNVAL"),
        (0x40, "POLLRDNORM"),
        (0x80, "POLLRDBAND"),
        (0x100, "POLLWRNORM"),
        (0x200, "POLLWRBAND"),
        (0x2000, "POLLRDHUP"),
    ];
    const AFD: &[(u32, &str)] = &[
        (0x1, "RECEIVE"),
        (0x2, "RECEIVE_EXPEDITED"),
        (0x4, "SEND"),
        (0x8, "DISCONNECT"),
        (0x10, "ABORT"),
        (0x20, "LOCAL_CLOSE"),
        (0x40, "CONNECT"),
        (0x80, "ACCEPT"),
        (0x100, "CONNECT_FAIL"),
    ];
    const KQUEUE: &[(u32, &str)] = &[
        (1 << 16, "EVFILT_READ"),
        (1 << 17, "EVFILT_WRITE"),
        (0x4000, "EV_ERROR"),
        (0x8000, "EV_EOF"),
    ];
    let table = match backend {
        Backend::Epoll => EPOLL,
        Backend::Poll => POLL,
        Backend::Afd | Backend::AfdDirect => AFD,
        Backend::Kqueue => KQUEUE,
        _ => &[],
    };
    let mut names: Vec<String> = table
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, n)| (*n).to_string())
        .collect();
    let known = table.iter().fold(0, |acc, (bit, _)| acc | bit);
    let rest = if backend == Backend::Kqueue {
        bits & !known & 0xffff
    } else {
        bits & !known
    };
    if backend == Backend::Kqueue && bits >> 24 != 0 {
        names.push(format!("fflags={}", bits >> 24));
    }
    if rest != 0 {
        names.push(format!("{rest:#x}"));
    }
    if names.is_empty() {
        "0".into()
    } else {
        names.join("|")
    }
}

/// Waits for the first event of `key`: its flags and native bits.
fn first(poller: &Poller, key: usize) -> io::Result<String> {
    let mut events = Events::new();
    let deadline = Instant::now() + LONG;
    loop {
        poller.wait_deadline(&mut events, Some(deadline))?;
        if let Some(e) = events.iter().find(|e| e.key() == key) {
            return Ok(format!(
                "{} · {}",
                flags(e),
                native(poller.backend(), e.native())
            ));
        }
        if Instant::now() >= deadline {
            return Ok(format!("(nothing within {LONG:?})"));
        }
    }
}

/// Watches for [`QUIET`]: what came, or that nothing did.
fn quiet(poller: &Poller, key: usize) -> io::Result<Option<String>> {
    let mut events = Events::new();
    let deadline = Instant::now() + QUIET;
    while Instant::now() < deadline {
        poller.wait_deadline(&mut events, Some(deadline))?;
        if let Some(e) = events.iter().find(|e| e.key() == key) {
            return Ok(Some(format!(
                "{} · {}",
                flags(e),
                native(poller.backend(), e.native())
            )));
        }
    }
    Ok(None)
}

fn nothing() -> String {
    format!("(nothing within {} ms)", QUIET.as_millis())
}

fn listener() -> io::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
}

/// A connected pair `(client, server)`, non-blocking.
fn pair() -> io::Result<(TcpStream, TcpStream)> {
    let l = listener()?;
    let c = TcpStream::connect(l.local_addr()?)?;
    let (s, _) = l.accept()?;
    for x in [&c, &s] {
        x.set_nonblocking(true)?;
        x.set_nodelay(true)?;
    }
    Ok((c, s))
}

fn connecting(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    match s.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        // Unix says EINPROGRESS, whose ErrorKind (`InProgress`) cannot be
        // named on stable Rust.
        Err(e) if format!("{:?}", e.kind()) == "InProgress" => {}
        Err(e) => return Err(e),
    }
    Ok(s)
}

fn read_all(mut s: &TcpStream) -> usize {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while let Ok(k @ 1..) = s.read(&mut buf) {
        n += k;
    }
    n
}

fn connect_refused(p: &Poller) -> io::Result<String> {
    let addr = listener()?.local_addr()?; // closed when dropped here
    let s = connecting(addr)?;
    p.add(&s, 1, Interest::WRITABLE, Mode::Oneshot)?;
    first(p, 1)
}

fn connect_ok(p: &Poller) -> io::Result<String> {
    let l = listener()?;
    let s = connecting(l.local_addr()?)?;
    p.add(&s, 1, Interest::WRITABLE, Mode::Oneshot)?;
    first(p, 1)
}

fn data_arrives(p: &Poller) -> io::Result<String> {
    let (mut c, s) = pair()?;
    p.add(&s, 1, Interest::READABLE, Mode::Oneshot)?;
    c.write_all(b"hello")?;
    first(p, 1)
}

fn drained(p: &Poller) -> io::Result<String> {
    let (mut c, s) = pair()?;
    p.add(&s, 1, Interest::READABLE, Mode::Oneshot)?;
    c.write_all(b"hello")?;
    first(p, 1)?;
    read_all(&s);
    p.modify(&s, 1, Interest::READABLE, Mode::Oneshot)?;
    Ok(quiet(p, 1)?.unwrap_or_else(nothing))
}

fn peer_shutdown(p: &Poller) -> io::Result<String> {
    let (c, s) = pair()?;
    p.add(&s, 1, Interest::READABLE, Mode::Oneshot)?;
    c.shutdown(Shutdown::Write)?;
    first(p, 1)
}

fn peer_close(p: &Poller) -> io::Result<String> {
    let (c, s) = pair()?;
    p.add(&s, 1, Interest::READABLE, Mode::Oneshot)?;
    drop(c);
    first(p, 1)
}

fn abortive_close(p: &Poller) -> io::Result<String> {
    let (c, s) = pair()?;
    p.add(&s, 1, Interest::BOTH, Mode::Oneshot)?;
    SockRef::from(&c).set_linger(Some(Duration::ZERO))?;
    drop(c);
    // Writable at once as well as reset: wait for the reset itself.
    first_where(p, &s, |e| e.is_error() || e.is_read_closed(), "no reset")
}

/// Waits for the first event of `s` (key 1, BOTH, oneshot) that `wanted`
/// accepts, re-arming after the others (a writable socket reports writable
/// before the hang-up comes).
fn first_where(
    p: &Poller,
    s: &TcpStream,
    wanted: impl Fn(&Event) -> bool,
    missing: &str,
) -> io::Result<String> {
    let mut events = Events::new();
    let deadline = Instant::now() + LONG;
    loop {
        p.wait_deadline(&mut events, Some(deadline))?;
        if let Some(e) = events.iter().find(|e| e.key() == 1) {
            if wanted(e) {
                return Ok(format!(
                    "{} · {}",
                    flags(e),
                    native(p.backend(), e.native())
                ));
            }
            p.modify(s, 1, Interest::BOTH, Mode::Oneshot)?;
        }
        if Instant::now() >= deadline {
            return Ok(format!("({missing} within {LONG:?})"));
        }
    }
}

fn oob_byte(p: &Poller) -> io::Result<String> {
    if !p.supports_priority() {
        return Ok("unsupported (no priority interest on this backend)".into());
    }
    let (c, s) = pair()?;
    p.add(
        &s,
        1,
        Interest::READABLE | Interest::PRIORITY,
        Mode::Oneshot,
    )?;
    SockRef::from(&c).send_out_of_band(b"!")?;
    first(p, 1)
}

/// Fills `c`'s send buffer (small buffers on both sides); returns bytes sent.
fn fill(c: &TcpStream, s: &TcpStream) -> io::Result<usize> {
    SockRef::from(c).set_send_buffer_size(4096)?;
    SockRef::from(s).set_recv_buffer_size(4096)?;
    let chunk = [7u8; 4096];
    let mut sent = 0;
    let deadline = Instant::now() + LONG;
    loop {
        match (&*c).write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(sent),
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other("the send buffer never filled"));
        }
    }
}

fn send_buffer_full(p: &Poller) -> io::Result<String> {
    let (c, s) = pair()?;
    fill(&c, &s)?;
    p.add(&c, 1, Interest::WRITABLE, Mode::Oneshot)?;
    Ok(quiet(p, 1)?.unwrap_or_else(nothing))
}

fn send_buffer_drained(p: &Poller) -> io::Result<String> {
    let (c, s) = pair()?;
    let sent = fill(&c, &s)?;
    p.add(&c, 1, Interest::WRITABLE, Mode::Oneshot)?;
    if let Some(early) = quiet(p, 1)? {
        return Ok(format!("writable before any drain: {early}"));
    }
    // The peer reads everything; the event comes once there is room.
    let deadline = Instant::now() + LONG;
    let mut got = 0;
    let mut events = Events::new();
    while got < sent && Instant::now() < deadline {
        got += read_all(&s);
        p.wait(&mut events, Some(Duration::from_millis(10)))?;
        if let Some(e) = events.iter().find(|e| e.key() == 1) {
            return Ok(format!(
                "{} · {}",
                flags(e),
                native(p.backend(), e.native())
            ));
        }
    }
    first(p, 1)
}

fn shut_both_ways(p: &Poller) -> io::Result<String> {
    let (c, s) = pair()?;
    c.shutdown(Shutdown::Write)?;
    s.shutdown(Shutdown::Write)?;
    p.add(&s, 1, Interest::BOTH, Mode::Oneshot)?;
    // Writable may come first on its own: wait for the hang-up.
    first_where(p, &s, Event::is_read_closed, "no hang-up")
}

fn local_shutdown_read(p: &Poller) -> io::Result<String> {
    let (_c, s) = pair()?;
    p.add(&s, 1, Interest::READABLE, Mode::Oneshot)?;
    s.shutdown(Shutdown::Read)?;
    Ok(quiet(p, 1)?.unwrap_or_else(nothing))
}

fn local_close(p: &Poller) -> io::Result<String> {
    let (_c, s) = pair()?;
    p.add(&s, 1, Interest::READABLE, Mode::Oneshot)?;
    drop(s);
    Ok(quiet(p, 1)?.unwrap_or_else(nothing))
}

fn listener_accept(p: &Poller) -> io::Result<String> {
    let l = listener()?;
    l.set_nonblocking(true)?;
    p.add(&l, 1, Interest::READABLE, Mode::Oneshot)?;
    let _c = TcpStream::connect(l.local_addr()?)?;
    first(p, 1)
}

fn udp_writable(p: &Poller) -> io::Result<String> {
    let u = UdpSocket::bind("127.0.0.1:0")?;
    u.set_nonblocking(true)?;
    p.add(&u, 1, Interest::WRITABLE, Mode::Oneshot)?;
    first(p, 1)
}

fn udp_datagram(p: &Poller) -> io::Result<String> {
    let u = UdpSocket::bind("127.0.0.1:0")?;
    u.set_nonblocking(true)?;
    p.add(&u, 1, Interest::READABLE, Mode::Oneshot)?;
    UdpSocket::bind("127.0.0.1:0")?.send_to(b"datagram", u.local_addr()?)?;
    first(p, 1)
}

/// The backends whose columns docs/EVENTS.md has, in its order.
pub const DOC_BACKENDS: [Backend; 4] = [
    Backend::Epoll,
    Backend::Poll,
    Backend::Afd,
    Backend::AfdDirect,
];

/// The markdown table of docs/EVENTS.md for the given columns (each a
/// backend and its outcomes, in scenario order).
pub fn table(columns: &[(Backend, Vec<Outcome>)]) -> String {
    let mut s = String::from("| scenario | what happens |");
    for (b, _) in columns {
        s += &format!(" {b} |");
    }
    s += "\n|---|---|";
    for _ in columns {
        s += "---|";
    }
    s += "\n";
    for (i, &(name, does, _)) in SCENARIOS.iter().enumerate() {
        s += &format!("| `{name}` | {does} |");
        for (_, outcomes) in columns {
            let cell = outcomes.get(i).map_or("", |o| o.seen.as_str());
            s += &format!(" {} |", cell.replace('|', "\\|"));
        }
        s += "\n";
    }
    s
}

/// Reads the column of `backend` out of a table made by [`table`]: the cells
/// of each scenario row, unescaped. `None` if the table has no such column.
pub fn column(table: &str, backend: Backend) -> Option<Vec<(String, String)>> {
    let mut lines = table.lines().filter(|l| l.starts_with('|'));
    let header = split_row(lines.next()?);
    let at = header.iter().position(|h| h == backend.name())?;
    lines.next()?; // the |---| line
    Some(
        lines
            .map(|l| {
                let cells = split_row(l);
                let name = cells.first().cloned().unwrap_or_default();
                (
                    name.trim_matches('`').to_string(),
                    cells.get(at).cloned().unwrap_or_default(),
                )
            })
            .collect(),
    )
}

/// The cells of a markdown table row, `\|` unescaped.
fn split_row(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut chars = line.trim().trim_start_matches('|').chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' if chars.peek() == Some(&'|') => {
                cur.push('|');
                chars.next();
            }
            '|' => {
                cells.push(cur.trim().to_string());
                cur.clear();
            }
            _ => cur.push(ch),
        }
    }
    if !cur.trim().is_empty() {
        cells.push(cur.trim().to_string());
    }
    cells
}

/// Plain text for the terminal.
pub fn render(backend: Backend, outcomes: &[Outcome]) -> String {
    let mut s = format!("backend: {backend}\n");
    for o in outcomes {
        s += &format!("{:<20} {}\n{:<20}   {}\n", o.scenario, o.does, "", o.seen);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_gives_its_columns_back() {
        let outcomes: Vec<Outcome> = SCENARIOS
            .iter()
            .map(|&(scenario, does, _)| Outcome {
                scenario,
                does,
                seen: format!("readable · EPOLLIN|EPOLLRDHUP for {scenario}"),
            })
            .collect();
        let t = table(&[
            (Backend::Epoll, outcomes.clone()),
            (Backend::Afd, outcomes.clone()),
        ]);
        let col = column(&t, Backend::Afd).unwrap();
        assert_eq!(col.len(), SCENARIOS.len());
        for ((name, cell), o) in col.iter().zip(&outcomes) {
            assert_eq!(name, o.scenario);
            assert_eq!(cell, &o.seen);
        }
        assert!(column(&t, Backend::Poll).is_none());
    }

    #[test]
    fn native_bits_are_named() {
        assert_eq!(
            native(Backend::Epoll, 0x2011),
            "EPOLLIN|EPOLLHUP|EPOLLRDHUP"
        );
        assert_eq!(native(Backend::Afd, 0x10c), "SEND|DISCONNECT|CONNECT_FAIL");
        assert_eq!(native(Backend::Poll, 0x8000_0001), "POLLIN|0x80000000");
        assert_eq!(native(Backend::Epoll, 0), "0");
    }
}
