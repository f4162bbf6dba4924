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
/// in `docs/ARCHITECTURE.md` (the event-mapping table); [`native`](Self::native)
/// gives the bits themselves, for diagnostics.
///
/// Two events are equal when their keys and flags are: the native bits are
/// not compared (nor hashed), so an event built with the constructors equals
/// the one a backend reports:
///
/// ```
/// use readiness::Event;
///
/// let expected = Event::readable(7).with_read_closed(true);
/// assert!(expected.is_readable() && expected.is_read_closed());
/// assert!(!expected.is_writable());
/// assert_eq!(expected, Event::none(7).with_readable(true).with_read_closed(true));
/// assert_ne!(expected, Event::readable(7));
/// assert_ne!(expected, Event::readable(8).with_read_closed(true));
/// ```
#[derive(Clone, Copy)]
pub struct Event {
    key: usize,
    native: u32,
    flags: u8,
}

// Sixteen bytes on 64-bit targets: the native bits fit in what was padding.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Event>() == 16);

impl PartialEq for Event {
    fn eq(&self, other: &Event) -> bool {
        self.key == other.key && self.flags == other.flags
    }
}

impl Eq for Event {}

impl std::hash::Hash for Event {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.flags.hash(state);
    }
}

impl Event {
    /// An event with these flags and no native bits (backends without them).
    pub(crate) const fn new(key: usize, flags: u8) -> Event {
        Event::with_native(key, flags, 0)
    }

    /// An event with these flags and the native bits they were decoded from.
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) const fn with_native(key: usize, flags: u8, native: u32) -> Event {
        Event { key, native, flags }
    }

    /// This event with `flags` and `native` bits added (kqueue merges the
    /// events of a oneshot registration's two filters).
    #[cfg_attr(
        not(any(
            target_vendor = "apple",
            target_os = "freebsd",
            target_os = "netbsd",
            target_os = "openbsd",
            target_os = "dragonfly"
        )),
        allow(dead_code)
    )]
    pub(crate) const fn merged(self, flags: u8, native: u32) -> Event {
        Event::with_native(self.key, self.flags | flags, self.native | native)
    }

    /// An event for `key` with no flag set. With the `with_*` methods, builds
    /// the event a test expects.
    pub const fn none(key: usize) -> Event {
        Event::new(key, 0)
    }
    /// An event for `key` with only readable set.
    pub const fn readable(key: usize) -> Event {
        Event::new(key, flag::READABLE)
    }
    /// An event for `key` with only writable set.
    pub const fn writable(key: usize) -> Event {
        Event::new(key, flag::WRITABLE)
    }

    const fn with_flag(mut self, bit: u8, on: bool) -> Event {
        if on {
            self.flags |= bit;
        } else {
            self.flags &= !bit;
        }
        self
    }
    /// This event with readable set (`true`) or cleared (`false`).
    #[must_use]
    pub const fn with_readable(self, on: bool) -> Event {
        self.with_flag(flag::READABLE, on)
    }
    /// This event with writable set or cleared.
    #[must_use]
    pub const fn with_writable(self, on: bool) -> Event {
        self.with_flag(flag::WRITABLE, on)
    }
    /// This event with priority set or cleared.
    #[must_use]
    pub const fn with_priority(self, on: bool) -> Event {
        self.with_flag(flag::PRIORITY, on)
    }
    /// This event with read-closed set or cleared.
    #[must_use]
    pub const fn with_read_closed(self, on: bool) -> Event {
        self.with_flag(flag::READ_CLOSED, on)
    }
    /// This event with write-closed set or cleared.
    #[must_use]
    pub const fn with_write_closed(self, on: bool) -> Event {
        self.with_flag(flag::WRITE_CLOSED, on)
    }
    /// This event with error set or cleared.
    #[must_use]
    pub const fn with_error(self, on: bool) -> Event {
        self.with_flag(flag::ERROR, on)
    }

    /// The key the source was registered with.
    pub const fn key(&self) -> usize {
        self.key
    }

    /// The bits the OS reported, for diagnostics (`readiness explore`). What
    /// they are depends on the backend:
    ///
    /// - `Epoll`: the `events` field of the `epoll_event` (`EPOLLIN`,
    ///   `EPOLLOUT`, `EPOLLRDHUP`, `EPOLLHUP`, `EPOLLERR`, ...).
    /// - `Poll`: the `revents` of the `pollfd`, zero-extended from its C
    ///   `short` (`POLLIN`, `POLLOUT`, `POLLHUP`, ...).
    /// - `Kqueue`: one or two `kevent`s packed: bits 0-15 the `flags`
    ///   (`EV_EOF`, `EV_ERROR`, ... truncated to 16 bits), bit 16 set for an
    ///   `EVFILT_READ` event, bit 17 for an `EVFILT_WRITE` event, bits 24-31
    ///   the `fflags` (the socket error with `EV_EOF`), capped at 255. When
    ///   both filters of a oneshot registration fire in one wait they become
    ///   one event and their bits are OR-ed.
    /// - `Afd`, `AfdDirect`: the `AFD_POLL_*` events of the completed poll
    ///   (`RECEIVE` 0x1, `RECEIVE_EXPEDITED` 0x2, `SEND` 0x4, `DISCONNECT`
    ///   0x8, `ABORT` 0x10, `CONNECT_FAIL` 0x100, ...); for an error event of
    ///   a poll that failed, its `NTSTATUS`.
    ///
    /// An event built with the constructors has 0. Not compared by `==`.
    pub const fn native(&self) -> u32 {
        self.native
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
        if self.native != 0 {
            s.field("native", &format_args!("{:#x}", self.native));
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
    /// The last wait consumed a notification.
    pub(crate) notified: bool,
}

impl Events {
    /// The default capacity of [`Events::new`].
    pub const DEFAULT_CAPACITY: usize = 1024;

    /// The largest capacity: [`with_capacity`](Self::with_capacity) clamps
    /// to it. 65,536 events a wait.
    ///
    /// Every backend's kernel call takes the count in a 32-bit integer
    /// (`epoll_wait`'s `int`, which Linux caps at `INT_MAX` over the entry
    /// size; `kevent`'s `int`; `GetQueuedCompletionStatusEx`'s `ULONG`), and
    /// the buffer is allocated in full up front: at this capacity about
    /// 1.75 MiB on x86-64 Linux (16 bytes an [`Event`] plus 12 an
    /// `epoll_event`) and 3 MiB on 64-bit Windows (plus 32 an
    /// `OVERLAPPED_ENTRY`). Events beyond the capacity are not lost: they
    /// stay queued for the next wait.
    pub const MAX_CAPACITY: usize = 1 << 16;

    /// A buffer for up to [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) events a wait.
    pub fn new() -> Events {
        Events::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A buffer for up to `capacity` events a wait, clamped to at least one
    /// and at most [`MAX_CAPACITY`](Self::MAX_CAPACITY).
    pub fn with_capacity(capacity: usize) -> Events {
        let capacity = capacity.clamp(1, Self::MAX_CAPACITY);
        Events {
            list: Vec::with_capacity(capacity),
            capacity,
            sys: crate::sys::RawEvents::with_capacity(capacity),
            notified: false,
        }
    }

    /// Whether the last wait consumed a [`notify`](crate::Poller::notify).
    ///
    /// `false` after a wait that timed out, and after a wait that returned
    /// events without consuming a notification. A wait that finds both a
    /// notification and ready sources may return the events with this
    /// `true`, or return them with this `false` and leave the notification
    /// pending, so that the next wait returns at once with this `true`: a
    /// notification is never lost. Several notifications before a wait are
    /// one. Cleared by [`clear`](Self::clear) and at the start of every wait.
    pub fn is_notified(&self) -> bool {
        self.notified
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
    /// Forgets the stored events and the notification flag.
    pub fn clear(&mut self) {
        self.list.clear();
        self.notified = false;
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
        f.debug_list().entries(self.list.iter()).finish()?;
        if self.notified {
            f.write_str(" (notified)")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = &'a Event;
    type IntoIter = std::slice::Iter<'a, Event>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}
