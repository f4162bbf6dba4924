//! A model-based random test of the poller: seeded sequences of operations
//! on a few TCP connections, each result checked against a model of what
//! the documented contract (crates/readiness/src/sys/mod.rs,
//! docs/ARCHITECTURE.md) says MAY and MUST happen.
//!
//! Operations: open a connection (the local end is the connecting or the
//! accepted socket, so a descriptor or handle value freed by a close is
//! often reused at once), `add`, `modify` (random key, interest and mode),
//! `delete`, peer writes, local reads and drains, peer shutdown(Write), peer
//! close, peer reset, local close with and without `delete`, waits with zero
//! and short timeouts into `Events` of capacity 1, 2 or 64, and "settle":
//! waits with a generous deadline until everything that MUST be reported
//! has been.
//!
//! What is checked (the model):
//!
//! - `add` of a registered socket: `AlreadyExists`; `modify` and `delete` of
//!   one that is not registered (never added, deleted, or a new socket with a
//!   closed one's value): `NotFound`; everything else `Ok`.
//! - Every event names a key currently registered: never a deleted key, an
//!   old key replaced by `modify`, or the key of a socket closed without
//!   `delete` (Windows: allowed while every wait since the close came back
//!   full, see [`may_report_closed`]).
//! - Interest `NONE`: nothing at all. Oneshot: at most one event per arm.
//!   Edge: no event unless something happened to the socket since its last
//!   report.
//! - Flags: at least one; readable only with readable interest and data
//!   sent and not read, or the peer's FIN or reset; writable only with
//!   writable interest; priority never (no out-of-band data is sent);
//!   read-closed only after the peer's FIN with readable interest, or a
//!   reset; write-closed and error only after a reset.
//! - MUST (settle): every armed oneshot and every level registration with
//!   a condition that holds (writable interest; readable interest and data
//!   sent and not read, or FIN; any interest and a reset) is reported within
//!   10 s of waits. Edge modes are not held to this.
//! - Reads return no more than was sent, end-of-stream only after a FIN or
//!   reset, and `ConnectionReset` only after a reset.
//!
//! Windows, as docs/WINDOWS.md ("Closing a socket without `delete`, and
//! handle reuse") documents it, each allowance behind [`windows`] with the
//! reason at its use: a registration with no poll of its in the kernel
//! cannot be told from a new socket on the same handle value, so `add` of a
//! registered socket may take it over (afd: `Ok`; afd-direct:
//! `ResourceBusy`), `modify`/`delete` of a never-added socket on a value
//! whose registration was closed without `delete` may act on that stale
//! registration (`Ok`), and a level registration closed without `delete`
//! may report the socket that got its value until that value is added,
//! modified or deleted.
//!
//! Knobs: `READINESS_MODEL_SEED=n` replays one sequence (its operation log
//! is printed); `READINESS_MODEL_CASES=n` runs n sequences (default
//! [`DEFAULT_CASES`]); `READINESS_MODEL_SOAK=1` runs [`SOAK_CASES`]
//! sequences of [`SOAK_OPS`] operations. On failure the seed and the
//! operation log of the first failing sequence are printed, with the seeds
//! of every other failing one.

mod util;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use readiness::{AsSource, Backend, Event, Events, Interest, Mode, Poller};

use util::*;

/// Sequences run by default: about 10 s on epoll or poll(2) on two cores,
/// and under a minute under Wine.
const DEFAULT_CASES: u64 = 100;
/// Operations per sequence.
const OPS: usize = 120;
const SOAK_CASES: u64 = 5_000;
const SOAK_OPS: usize = 200;
/// Connections alive at once, at most.
const SLOTS: usize = 3;
/// The seed of sequence 0; sequence `i` uses `BASE_SEED + i`.
const BASE_SEED: u64 = 0x5eed_0000;

// ------------------------------------------------------------------- PRNG

/// SplitMix64: small, deterministic, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

// ------------------------------------------------------------------ model

/// A registration as the model knows it.
#[derive(Clone, Copy, Debug)]
struct Reg {
    key: usize,
    interest: Interest,
    mode: Mode,
    /// Oneshot: not reported since armed.
    armed: bool,
    /// Edge: something happened to the socket since the last report.
    edge_pending: bool,
}

/// A live connection: the local end (registered or not) and its peer.
struct Conn {
    local: TcpStream,
    peer: Option<TcpStream>,
    /// The local end's descriptor number or handle value.
    value: u64,
    /// Bytes the peer wrote, and bytes the local end read.
    sent: u64,
    read: u64,
    /// The peer shut down its sending side or closed (FIN sent).
    fin: bool,
    /// The peer reset the connection.
    reset: bool,
    /// There was unread data at some point since the last wait (a Windows
    /// completion from then may still be queued).
    had_data_since_wait: bool,
    reg: Option<Reg>,
}

impl Conn {
    fn unread(&self) -> u64 {
        self.sent - self.read
    }
}

/// What a key stands for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum KeyState {
    /// The current key of the registration in this slot.
    Live(usize),
    /// Its socket was closed without `delete` before wait number `.0`.
    Closed(u64),
    /// Windows: a level registration closed without `delete`; until its
    /// handle value is added, modified or deleted again, it may report the
    /// socket that got the value.
    ClosedLevel,
    /// Deleted, replaced by `modify`, or closed after a `delete`.
    Gone,
}

struct Model<'a> {
    poller: &'a Poller,
    backend: Backend,
    rng: Rng,
    listener: TcpListener,
    slots: Vec<Option<Conn>>,
    keys: HashMap<usize, KeyState>,
    /// Windows: handle values of registrations closed without `delete`, and
    /// their keys: the poller may still hold them as stale registrations.
    stale: HashMap<u64, usize>,
    next_key: usize,
    waits: u64,
    /// The number of the last wait that returned fewer events than its
    /// buffer holds: the poller had nothing more queued then.
    last_unfull: u64,
    pending_unfull: Option<u64>,
    buffers: [Events; 3],
    log: String,
    /// Events checked, and registrations found reported by a settle.
    events: u64,
    musts: u64,
}

/// Windows (AFD): a completion (or a stashed event) queued before the close
/// may still be returned, in order, by the waits that follow; with a small
/// buffer that can take several waits, but never past a wait that came back
/// with room to spare (it took everything queued). docs/WINDOWS.md. epoll
/// and poll(2) report nothing once the close returned.
fn may_report_closed(backend: Backend) -> bool {
    matches!(backend, Backend::Afd | Backend::AfdDirect)
}

/// Windows (AFD): the allowances of docs/WINDOWS.md for handle values it
/// cannot tell apart (see the module documentation).
fn windows(backend: Backend) -> bool {
    matches!(backend, Backend::Afd | Backend::AfdDirect)
}

/// Windows (AFD): an event is the result of a poll that completed earlier;
/// one that completed while data was there may be dequeued after the data
/// was read. epoll, poll(2) and kqueue re-check readiness when they report.
fn may_report_stale_readable(backend: Backend) -> bool {
    matches!(backend, Backend::Afd | Backend::AfdDirect)
}

type Check = Result<(), String>;

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

fn kind(r: &io::Result<()>) -> Option<ErrorKind> {
    r.as_ref().err().map(io::Error::kind)
}

impl<'a> Model<'a> {
    fn new(poller: &'a Poller, seed: u64) -> Model<'a> {
        let listener = listener();
        Model {
            poller,
            backend: poller.backend(),
            rng: Rng(seed),
            listener,
            slots: (0..SLOTS).map(|_| None).collect(),
            keys: HashMap::new(),
            stale: HashMap::new(),
            next_key: 0,
            waits: 0,
            last_unfull: 0,
            pending_unfull: None,
            buffers: [
                Events::with_capacity(1),
                Events::with_capacity(2),
                Events::with_capacity(64),
            ],
            log: String::new(),
            events: 0,
            musts: 0,
        }
    }

    fn note(&mut self, line: impl AsRef<str>) {
        self.log.push_str(line.as_ref());
        self.log.push('\n');
    }

    fn fresh_key(&mut self) -> usize {
        self.next_key += 1;
        self.next_key
    }

    fn random_interest(&mut self) -> Interest {
        let mut choices = vec![
            Interest::NONE,
            Interest::READABLE,
            Interest::READABLE,
            Interest::WRITABLE,
            Interest::BOTH,
        ];
        if self.poller.supports_priority() {
            choices.push(Interest::READABLE | Interest::PRIORITY);
        }
        self.rng.pick(&choices)
    }

    fn random_mode(&mut self) -> Mode {
        let mut choices = vec![Mode::Oneshot; 4];
        if self.poller.supports_level() {
            choices.extend([Mode::Level; 3]);
        }
        if self.poller.supports_edge() {
            choices.extend([Mode::Edge, Mode::EdgeOneshot]);
        }
        self.rng.pick(&choices)
    }

    /// A slot holding a connection, if any.
    fn live_slot(&mut self) -> Option<usize> {
        let live: Vec<usize> = (0..SLOTS).filter(|&i| self.slots[i].is_some()).collect();
        (!live.is_empty()).then(|| self.rng.pick(&live))
    }

    fn conn(&mut self, slot: usize) -> &mut Conn {
        self.slots[slot].as_mut().unwrap()
    }

    /// One random operation.
    fn step(&mut self) -> Check {
        let empty: Vec<usize> = (0..SLOTS).filter(|&i| self.slots[i].is_none()).collect();
        let roll = self.rng.below(100);
        let Some(slot) = (if !empty.is_empty() && (roll < 8 || empty.len() == SLOTS) {
            None
        } else {
            self.live_slot()
        }) else {
            let slot = self.rng.pick(&empty);
            return self.open(slot);
        };
        match roll {
            0..=19 => self.add(slot),
            20..=33 => self.modify(slot),
            34..=37 => self.delete(slot),
            38..=53 => self.peer_write(slot),
            54..=62 => self.local_read(slot),
            63..=64 => self.peer_shutdown(slot),
            65 => self.peer_close(slot),
            66..=67 => self.peer_reset(slot),
            68..=69 => self.local_close(slot, true),
            70..=72 => self.local_close(slot, false),
            73..=82 => self.wait(Duration::ZERO),
            83..=86 => self.wait(Duration::from_millis(5)),
            _ => self.settle(),
        }
    }

    fn open(&mut self, slot: usize) -> Check {
        let addr = self.listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        let (server, _) = self.listener.accept().map_err(|e| format!("accept: {e}"))?;
        for s in [&client, &server] {
            s.set_nonblocking(true).unwrap();
            s.set_nodelay(true).unwrap();
        }
        // The connecting socket was created first: it takes a value just
        // freed by a close.
        let (local, peer) = if self.rng.chance(50) {
            (client, server)
        } else {
            (server, client)
        };
        let value = value(&local);
        self.note(format!("open slot {slot}: local value {value:#x}"));
        self.slots[slot] = Some(Conn {
            local,
            peer: Some(peer),
            value,
            sent: 0,
            read: 0,
            fin: false,
            reset: false,
            had_data_since_wait: false,
            reg: None,
        });
        Ok(())
    }

    fn add(&mut self, slot: usize) -> Check {
        let key = self.fresh_key();
        let interest = self.random_interest();
        let mode = self.random_mode();
        let conn = self.slots[slot].as_ref().unwrap();
        let r = self.poller.add(&conn.local, key, interest, mode);
        let registered = conn.reg.is_some();
        self.note(format!(
            "add slot {slot} key {key} {interest:?} {mode:?}: {r:?}"
        ));
        if registered {
            return match kind(&r) {
                Some(ErrorKind::AlreadyExists) => Ok(()),
                // Windows: a registration with no poll in the kernel is taken
                // for a closed socket's, its value reused (docs/WINDOWS.md).
                None if windows(self.backend) && self.backend == Backend::Afd => {
                    let old = self.conn(slot).reg.unwrap();
                    self.keys.insert(old.key, KeyState::Gone);
                    self.register(slot, key, interest, mode);
                    Ok(())
                }
                Some(ErrorKind::ResourceBusy) if self.backend == Backend::AfdDirect => Ok(()),
                _ => Err(format!(
                    "add of a registered socket: {r:?}, expected AlreadyExists"
                )),
            };
        }
        r.map_err(|e| format!("add of an unregistered socket failed: {e}"))?;
        self.resolve_stale(slot);
        self.register(slot, key, interest, mode);
        Ok(())
    }

    /// The model's record of a successful `add` (or `modify`) of `slot`.
    fn register(&mut self, slot: usize, key: usize, interest: Interest, mode: Mode) {
        self.conn(slot).reg = Some(Reg {
            key,
            interest,
            mode,
            armed: true,
            edge_pending: true,
        });
        self.keys.insert(key, KeyState::Live(slot));
    }

    /// Windows: the stale registration on `slot`'s handle value, if any, is
    /// gone (a call on the value answered as if it were).
    fn resolve_stale(&mut self, slot: usize) {
        let value = self.slots[slot].as_ref().unwrap().value;
        if let Some(key) = self.stale.remove(&value) {
            self.keys.insert(key, KeyState::Gone);
        }
    }

    fn modify(&mut self, slot: usize) -> Check {
        let old = self.slots[slot].as_ref().unwrap().reg;
        let key = match old {
            Some(reg) if self.rng.chance(50) => reg.key,
            _ => self.fresh_key(),
        };
        let interest = self.random_interest();
        let mode = self.random_mode();
        let conn = self.slots[slot].as_ref().unwrap();
        let r = self.poller.modify(&conn.local, key, interest, mode);
        self.note(format!(
            "modify slot {slot} key {key} {interest:?} {mode:?}: {r:?}"
        ));
        let Some(old) = old else {
            let value = self.slots[slot].as_ref().unwrap().value;
            let stale = windows(self.backend) && self.stale.contains_key(&value);
            return match kind(&r) {
                Some(ErrorKind::NotFound) => {
                    if stale {
                        self.resolve_stale(slot);
                    }
                    Ok(())
                }
                // Windows: the value's stale registration (closed without
                // delete, its close not visible) takes the modify
                // (docs/WINDOWS.md): the new socket is registered now.
                None if stale => {
                    self.resolve_stale(slot);
                    self.register(slot, key, interest, mode);
                    Ok(())
                }
                _ => Err(format!(
                    "modify of an unregistered socket: {r:?}, expected NotFound"
                )),
            };
        };
        r.map_err(|e| format!("modify of a registered socket failed: {e}"))?;
        if old.key != key {
            self.keys.insert(old.key, KeyState::Gone);
        }
        self.keys.insert(key, KeyState::Live(slot));
        self.conn(slot).reg = Some(Reg {
            key,
            interest,
            mode,
            armed: true,
            edge_pending: true,
        });
        Ok(())
    }

    fn delete(&mut self, slot: usize) -> Check {
        let conn = self.slots[slot].as_ref().unwrap();
        let r = self.poller.delete(&conn.local);
        let (reg, value) = (conn.reg, conn.value);
        self.note(format!("delete slot {slot}: {r:?}"));
        let stale = windows(self.backend) && self.stale.contains_key(&value);
        match reg {
            None => match kind(&r) {
                Some(ErrorKind::NotFound) => {
                    if stale {
                        self.resolve_stale(slot);
                    }
                    Ok(())
                }
                // Windows: the value's stale registration takes the delete
                // (docs/WINDOWS.md).
                None if stale => {
                    self.resolve_stale(slot);
                    Ok(())
                }
                _ => Err(format!(
                    "delete of an unregistered socket: {r:?}, expected NotFound"
                )),
            },
            Some(reg) => {
                r.map_err(|e| format!("delete of a registered socket failed: {e}"))?;
                self.keys.insert(reg.key, KeyState::Gone);
                self.conn(slot).reg = None;
                Ok(())
            }
        }
    }

    /// Something happened to the socket: an edge registration may report.
    fn touched(&mut self, slot: usize) {
        if let Some(reg) = &mut self.conn(slot).reg {
            reg.edge_pending = true;
        }
    }

    fn peer_write(&mut self, slot: usize) -> Check {
        let n = 1 + self.rng.below(100) as usize;
        let conn = self.conn(slot);
        let Some(peer) = &conn.peer else {
            return Ok(());
        };
        if conn.fin || conn.reset {
            return Ok(());
        }
        send(peer, &vec![b'x'; n]);
        conn.sent += n as u64;
        conn.had_data_since_wait = true;
        self.touched(slot);
        self.note(format!("peer write slot {slot}: {n} bytes"));
        Ok(())
    }

    fn local_read(&mut self, slot: usize) -> Check {
        let all = self.rng.chance(50);
        let conn = self.conn(slot);
        let mut buf = [0u8; 64];
        let mut got = 0u64;
        let mut outcome = String::new();
        loop {
            match (&conn.local).read(&mut buf) {
                Ok(0) => {
                    if !(conn.reset || (conn.fin && conn.read == conn.sent)) {
                        return Err(format!(
                            "slot {slot}: end of stream with {} bytes unread and no FIN",
                            conn.unread()
                        ));
                    }
                    outcome = "end of stream".into();
                    break;
                }
                Ok(n) => {
                    conn.read += n as u64;
                    got += n as u64;
                    if conn.read > conn.sent && !conn.reset {
                        return Err(format!(
                            "slot {slot}: read {} bytes of {} sent",
                            conn.read, conn.sent
                        ));
                    }
                    if !all {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    outcome = "would block".into();
                    break;
                }
                // Wine reads end-of-stream after a reset instead
                // (docs/WINDOWS.md); both are accepted after a reset.
                Err(e) if e.kind() == ErrorKind::ConnectionReset && conn.reset => {
                    outcome = "reset".into();
                    break;
                }
                Err(e) => return Err(format!("slot {slot}: read failed: {e}")),
            }
        }
        if conn.reset {
            // What a reset leaves to read is not modelled.
            conn.read = conn.sent.max(conn.read);
            conn.sent = conn.read;
        }
        self.note(format!(
            "local read slot {slot} ({}): {got} bytes, {outcome}",
            if all { "drain" } else { "some" }
        ));
        self.touched(slot);
        Ok(())
    }

    fn peer_shutdown(&mut self, slot: usize) -> Check {
        let conn = self.conn(slot);
        if let Some(peer) = &conn.peer
            && !conn.reset
        {
            let _ = peer.shutdown(Shutdown::Write);
            conn.fin = true;
        }
        self.touched(slot);
        self.note(format!("peer shutdown(Write) slot {slot}"));
        Ok(())
    }

    fn peer_close(&mut self, slot: usize) -> Check {
        let conn = self.conn(slot);
        if conn.peer.take().is_some() && !conn.reset {
            conn.fin = true;
        }
        self.touched(slot);
        self.note(format!("peer close slot {slot}"));
        Ok(())
    }

    fn peer_reset(&mut self, slot: usize) -> Check {
        let conn = self.conn(slot);
        let Some(peer) = conn.peer.take() else {
            return Ok(());
        };
        // A reset after a FIN (the peer shut down but did not close) still
        // aborts the connection.
        reset(peer);
        conn.reset = true;
        self.touched(slot);
        self.note(format!("peer reset slot {slot}"));
        Ok(())
    }

    fn local_close(&mut self, slot: usize, delete: bool) -> Check {
        let conn = self.slots[slot].take().unwrap();
        let value = conn.value;
        if let Some(reg) = conn.reg {
            if delete {
                let r = self.poller.delete(&conn.local);
                self.note(format!("delete slot {slot}: {r:?}"));
                r.map_err(|e| format!("delete of a registered socket failed: {e}"))?;
                self.keys.insert(reg.key, KeyState::Gone);
            } else {
                let level_stays = windows(self.backend) && reg.mode == Mode::Level;
                let state = if level_stays {
                    KeyState::ClosedLevel
                } else {
                    KeyState::Closed(self.waits)
                };
                self.keys.insert(reg.key, state);
                if windows(self.backend) {
                    self.stale.insert(value, reg.key);
                }
            }
        }
        let how = match (conn.reg.is_some(), delete) {
            (false, _) => " (not registered)",
            (true, true) => " after delete",
            (true, false) => " without delete",
        };
        drop(conn);
        self.note(format!("local close slot {slot} (value {value:#x}){how}"));
        Ok(())
    }

    /// Checks one event against the model and updates it (oneshot disarms).
    fn check_event(&mut self, event: &Event) -> Check {
        self.events += 1;
        let key = event.key();
        let slot = match self.keys.get(&key) {
            Some(KeyState::Live(slot)) => *slot,
            // Windows: what was queued at the close comes out in order, so
            // with a small buffer maybe some waits later; never after a wait
            // that returned with room to spare (nothing was queued then).
            Some(KeyState::Closed(at))
                if may_report_closed(self.backend) && self.last_unfull <= *at =>
            {
                return Ok(());
            }
            // Windows: a level registration closed without delete polls
            // whatever socket got its value (docs/WINDOWS.md).
            Some(KeyState::ClosedLevel) => return Ok(()),
            Some(state) => {
                return Err(format!(
                    "event for a key no longer registered ({state:?}): {event:?}"
                ));
            }
            None => return Err(format!("event for a key never registered: {event:?}")),
        };
        let backend = self.backend;
        let conn = self.slots[slot].as_mut().unwrap();
        let (unread, fin, reset) = (conn.unread(), conn.fin, conn.reset);
        let data = unread > 0 || (may_report_stale_readable(backend) && conn.had_data_since_wait);
        let reg = conn.reg.as_mut().unwrap();
        let i = reg.interest;
        if i.is_none() {
            return Err(format!("event for interest NONE: {event:?}"));
        }
        if oneshot(reg.mode) && !reg.armed {
            return Err(format!("second event for a oneshot arm: {event:?}"));
        }
        if edge(reg.mode) && !reg.edge_pending {
            return Err(format!(
                "edge event with nothing new on the socket: {event:?}"
            ));
        }
        if bits(event) == 0 {
            return Err(format!("event without flags: {event:?}"));
        }
        let mut bad = Vec::new();
        if event.is_readable() && !(i.is_readable() && (data || fin || reset)) {
            bad.push("readable");
        }
        if event.is_writable() && !i.is_writable() {
            bad.push("writable");
        }
        if event.is_priority() {
            bad.push("priority");
        }
        if event.is_read_closed() && !((i.is_readable() && fin) || reset) {
            bad.push("read_closed");
        }
        if event.is_write_closed() && !reset {
            bad.push("write_closed");
        }
        if event.is_error() && !reset {
            bad.push("error");
        }
        if !bad.is_empty() {
            return Err(format!(
                "flags {bad:?} not allowed: {event:?} (interest {i:?}, {unread} unread, \
                 fin {fin}, reset {reset})"
            ));
        }
        if oneshot(reg.mode) {
            reg.armed = false;
        }
        reg.edge_pending = false;
        Ok(())
    }

    /// One wait into one of the buffers; every event checked.
    fn wait_once(&mut self, which: usize, deadline: Option<Instant>) -> io::Result<Vec<Event>> {
        let mut events = std::mem::replace(&mut self.buffers[which], Events::with_capacity(1));
        let r = self.poller.wait_deadline(&mut events, deadline);
        let got: Vec<Event> = events.iter().copied().collect();
        let unfull = got.len() < events.capacity();
        self.buffers[which] = events;
        self.waits += 1;
        // Recorded after the events are checked (see `after_wait`), through
        // this flag: the events of this very wait are judged by the waits
        // before it.
        self.pending_unfull = unfull.then_some(self.waits);
        r.map(|_| got)
    }

    fn after_wait(&mut self) {
        for conn in self.slots.iter_mut().flatten() {
            conn.had_data_since_wait = conn.unread() > 0;
        }
        if let Some(w) = self.pending_unfull.take() {
            self.last_unfull = w;
        }
    }

    fn wait(&mut self, timeout: Duration) -> Check {
        let which = self.rng.below(3) as usize;
        let capacity = self.buffers[which].capacity();
        let got = self
            .wait_once(which, Some(Instant::now() + timeout))
            .map_err(|e| format!("wait failed: {e}"))?;
        self.note(format!("wait {timeout:?} capacity {capacity}: {got:?}"));
        for e in &got {
            self.check_event(e)?;
        }
        self.after_wait();
        Ok(())
    }

    /// The keys that MUST be reported now.
    fn must_report(&self) -> Vec<usize> {
        let mut keys = Vec::new();
        for conn in self.slots.iter().flatten() {
            let Some(reg) = conn.reg else { continue };
            let i = reg.interest;
            if i.is_none() || edge(reg.mode) {
                continue;
            }
            if reg.mode == Mode::Oneshot && !reg.armed {
                continue;
            }
            let holds = i.is_writable()
                || (i.is_readable() && (conn.unread() > 0 || conn.fin))
                || conn.reset;
            if holds {
                keys.push(reg.key);
            }
        }
        keys
    }

    fn settle(&mut self) -> Check {
        let which = self.rng.below(3) as usize;
        let capacity = self.buffers[which].capacity();
        let mut missing = self.must_report();
        self.note(format!(
            "settle capacity {capacity}: must report {missing:?}"
        ));
        let deadline = Instant::now() + LONG;
        while !missing.is_empty() {
            if Instant::now() >= deadline {
                return Err(format!("not reported within {LONG:?}: keys {missing:?}"));
            }
            let got = self
                .wait_once(which, Some(deadline))
                .map_err(|e| format!("wait failed: {e}"))?;
            self.note(format!("  wait: {got:?}"));
            for e in &got {
                self.check_event(e)?;
                if missing.contains(&e.key()) {
                    self.musts += 1;
                    missing.retain(|&k| k != e.key());
                }
            }
            self.after_wait();
        }
        Ok(())
    }

    fn teardown(&mut self) -> Check {
        for slot in 0..SLOTS {
            if self.slots[slot].is_some() {
                self.local_close(slot, true)?;
            }
        }
        Ok(())
    }
}

/// Whether `mode` disarms after an event (the public API has no helper).
fn oneshot(mode: Mode) -> bool {
    matches!(mode, Mode::Oneshot | Mode::EdgeOneshot)
}

/// Whether `mode` is edge-triggered.
fn edge(mode: Mode) -> bool {
    matches!(mode, Mode::Edge | Mode::EdgeOneshot)
}

/// Runs one sequence: its result, its operation log, and the counts of
/// events checked and of MUST reports met.
fn run_case(seed: u64, ops: usize) -> (Result<(), String>, String, [u64; 2]) {
    let poller = poller();
    let mut model = Model::new(&poller, seed);
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        for n in 0..ops {
            if let Err(e) = model.step() {
                return Err(format!("operation {n}: {e}"));
            }
        }
        model.settle().map_err(|e| format!("final settle: {e}"))?;
        model.teardown()
    }));
    let result = match result {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    };
    let counts = [model.events, model.musts];
    (result, std::mem::take(&mut model.log), counts)
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = v
        .strip_prefix("0x")
        .map_or_else(|| v.parse(), |h| u64::from_str_radix(h, 16));
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

#[test]
fn random_sequences_follow_the_model() {
    let soak = std::env::var_os("READINESS_MODEL_SOAK").is_some_and(|v| v != "0");
    let ops = if soak { SOAK_OPS } else { OPS };
    let seeds: Vec<u64> = match env_u64("READINESS_MODEL_SEED") {
        Some(seed) => vec![seed],
        None => {
            let cases = env_u64("READINESS_MODEL_CASES").unwrap_or(if soak {
                SOAK_CASES
            } else {
                DEFAULT_CASES
            });
            (0..cases).map(|i| BASE_SEED + i).collect()
        }
    };
    let backend = poller().backend();
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut totals = [0u64; 2];
    for &seed in &seeds {
        let (result, log, [events, musts]) = run_case(seed, ops);
        totals[0] += events;
        totals[1] += musts;
        if let Err(why) = result {
            if failures.is_empty() {
                eprintln!(
                    "model: {backend}: sequence with seed {seed:#x} failed: {why}\n\
                     replay: READINESS_MODEL_SEED={seed:#x}\noperation log:\n{log}"
                );
            }
            failures.push((seed, why));
        } else if seeds.len() == 1 {
            eprintln!("model: {backend}: seed {seed:#x} passed\noperation log:\n{log}");
        }
    }
    let mut summary = format!(
        "model: {backend}: {} of {} sequences ({ops} operations each) failed, {:.1?}; \
         {} events checked, {} MUST reports met",
        failures.len(),
        seeds.len(),
        start.elapsed(),
        totals[0],
        totals[1]
    );
    for (seed, why) in &failures {
        let _ = write!(summary, "\n  seed {seed:#x}: {why}");
    }
    eprintln!("{summary}");
    assert!(failures.is_empty(), "{summary}");
}
