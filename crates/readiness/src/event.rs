//! The platform-neutral vocabulary: interests, modes, events and the event buffer.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// The largest key a source may be registered with.
///
/// Keys above it (the upper half of `usize`) are reserved for the poller's own
/// use: its wake-up source and internal markers; registering one fails with
/// [`ErrorKind::InvalidInput`](std::io::ErrorKind::InvalidInput). The limit is
/// the same on every backend, so code that works on one works on all.
pub const MAX_KEY: usize = (usize::MAX >> 1) - 1;

/// What readiness a registration asks for.
///
/// Combine with `|`: `Interest::READABLE | Interest::PRIORITY`.
/// [`Interest::NONE`] keeps the source registered but disarmed: nothing at all
/// is reported for it, not even errors or hang-ups, until it is modified.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Interest(u8);

const I_READ: u8 = 1;
const I_WRITE: u8 = 2;
const I_PRI: u8 = 4;

impl Interest {
    /// No interest: registered, but nothing is reported.
    pub const NONE: Interest = Interest(0);
    /// Data can be read, a connection can be accepted, or the peer hung up.
    pub const READABLE: Interest = Interest(I_READ);
    /// Data can be written, or an outbound connection finished (or failed).
    pub const WRITABLE: Interest = Interest(I_WRITE);
    /// Both [`READABLE`](Self::READABLE) and [`WRITABLE`](Self::WRITABLE).
    pub const BOTH: Interest = Interest(I_READ | I_WRITE);
    /// Out-of-band (TCP urgent) data arrived. Only on backends whose
    /// [`Poller::supports_priority`](crate::Poller::supports_priority) is true.
    pub const PRIORITY: Interest = Interest(I_PRI);

    /// Whether readable readiness is asked for.
    pub const fn is_readable(self) -> bool {
        self.0 & I_READ != 0
    }
    /// Whether writable readiness is asked for.
    pub const fn is_writable(self) -> bool {
        self.0 & I_WRITE != 0
    }
    /// Whether out-of-band readiness is asked for.
    pub const fn is_priority(self) -> bool {
        self.0 & I_PRI != 0
    }
    /// Whether nothing is asked for.
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }
    /// This interest plus `other`.
    pub const fn add(self, other: Interest) -> Interest {
        Interest(self.0 | other.0)
    }
    /// This interest without `other`.
    pub const fn remove(self, other: Interest) -> Interest {
        Interest(self.0 & !other.0)
    }
}

impl BitOr for Interest {
    type Output = Interest;
    fn bitor(self, rhs: Interest) -> Interest {
        self.add(rhs)
    }
}

impl BitOrAssign for Interest {
    fn bitor_assign(&mut self, rhs: Interest) {
        *self = self.add(rhs);
    }
}

impl fmt::Debug for Interest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return f.write_str("NONE");
        }
        let names = [
            (self.is_readable(), "READABLE"),
            (self.is_writable(), "WRITABLE"),
            (self.is_priority(), "PRIORITY"),
        ];
        let mut first = true;
        for (_, name) in names.iter().filter(|(on, _)| *on) {
            if !first {
                f.write_str(" | ")?;
            }
            f.write_str(name)?;
            first = false;
        }
        Ok(())
    }
}

/// How a registration is triggered.
///
/// Not every backend offers every mode; [`Poller::supports_level`] and
/// [`Poller::supports_edge`] tell, and registering with a mode the backend
/// lacks fails with [`ErrorKind::Unsupported`](std::io::ErrorKind::Unsupported).
/// [`Mode::Oneshot`] works everywhere and is what portable code should use.
///
/// [`Poller::supports_level`]: crate::Poller::supports_level
/// [`Poller::supports_edge`]: crate::Poller::supports_edge
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Report once, then stay disarmed until [`Poller::modify`](crate::Poller::modify).
    #[default]
    Oneshot,
    /// Report on every wait for as long as the condition holds.
    Level,
    /// Report when the condition newly arises (more data, more room).
    Edge,
    /// Edge-triggered, then disarmed until modified.
    EdgeOneshot,
}

impl Mode {
    pub(crate) const fn is_edge(self) -> bool {
        matches!(self, Mode::Edge | Mode::EdgeOneshot)
    }
    pub(crate) const fn is_oneshot(self) -> bool {
        matches!(self, Mode::Oneshot | Mode::EdgeOneshot)
    }
}

/// Flags of an [`Event`], as the backends fill them in.
pub(crate) mod flag {
    pub const READABLE: u8 = 1;
    pub const WRITABLE: u8 = 2;
    pub const PRIORITY: u8 = 4;
    pub const READ_CLOSED: u8 = 8;
    pub const WRITE_CLOSED: u8 = 16;
    pub const ERROR: u8 = 32;
}

/// A readiness event: the key a source was registered with and what happened.
///
/// The mapping from each backend's native bits to these flags is documented
/// in `docs/ARCHITECTURE.md` (the event-mapping table).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event {
    key: usize,
    flags: u8,
}

impl Event {
    pub(crate) const fn new(key: usize, flags: u8) -> Event {
        Event { key, flags }
    }

    /// The key the source was registered with.
    pub const fn key(&self) -> usize {
        self.key
    }
    /// Data can be read, or a connection accepted.
    pub const fn is_readable(&self) -> bool {
        self.flags & flag::READABLE != 0
    }
    /// Data can be written, or an outbound connection completed.
    pub const fn is_writable(&self) -> bool {
        self.flags & flag::WRITABLE != 0
    }
    /// Out-of-band data can be read.
    pub const fn is_priority(&self) -> bool {
        self.flags & flag::PRIORITY != 0
    }
    /// The peer will send no more: it shut down its sending side or closed.
    pub const fn is_read_closed(&self) -> bool {
        self.flags & flag::READ_CLOSED != 0
    }
    /// Nothing more can be sent: the connection is closed in both directions
    /// (reset, failed connect, or shut down both ways). A local
    /// `shutdown(Write)` alone is not reported.
    pub const fn is_write_closed(&self) -> bool {
        self.flags & flag::WRITE_CLOSED != 0
    }
    /// The socket has an error pending: a reset, or a failed connect. Read it
    /// with `take_error()` on the socket.
    pub const fn is_error(&self) -> bool {
        self.flags & flag::ERROR != 0
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Event");
        s.field("key", &self.key);
        let names = [
            (flag::READABLE, "readable"),
            (flag::WRITABLE, "writable"),
            (flag::PRIORITY, "priority"),
            (flag::READ_CLOSED, "read_closed"),
            (flag::WRITE_CLOSED, "write_closed"),
            (flag::ERROR, "error"),
        ];
        for (bit, name) in names {
            if self.flags & bit != 0 {
                s.field(name, &true);
            }
        }
        s.finish()
    }
}

/// A reusable buffer that [`Poller::wait`](crate::Poller::wait) fills.
///
/// Each wait clears it first and stores at most [`capacity`](Self::capacity)
/// events; anything beyond that stays queued for the next wait.
pub struct Events {
    pub(crate) list: Vec<Event>,
    pub(crate) capacity: usize,
    pub(crate) sys: crate::sys::RawEvents,
}

impl Events {
    /// The default capacity of [`Events::new`].
    pub const DEFAULT_CAPACITY: usize = 1024;

    /// A buffer for up to [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) events a wait.
    pub fn new() -> Events {
        Events::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A buffer for up to `capacity` events a wait (at least one).
    pub fn with_capacity(capacity: usize) -> Events {
        let capacity = capacity.max(1);
        Events {
            list: Vec::with_capacity(capacity),
            capacity,
            sys: crate::sys::RawEvents::with_capacity(capacity),
        }
    }

    /// The events of the last wait.
    pub fn iter(&self) -> std::slice::Iter<'_, Event> {
        self.list.iter()
    }
    /// How many events the last wait stored.
    pub fn len(&self) -> usize {
        self.list.len()
    }
    /// Whether the last wait stored no event.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    /// The most events one wait stores.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Forgets the stored events.
    pub fn clear(&mut self) {
        self.list.clear();
    }
    /// Room left in this wait.
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) fn remaining(&self) -> usize {
        self.capacity - self.list.len()
    }
    /// Stores one event (backends call this; they respect [`Self::remaining`]).
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) fn push(&mut self, event: Event) {
        debug_assert!(self.list.len() < self.capacity);
        self.list.push(event);
    }
}

impl Default for Events {
    fn default() -> Events {
        Events::new()
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.list.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = &'a Event;
    type IntoIter = std::slice::Iter<'a, Event>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}
