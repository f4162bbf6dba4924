//! BSD and Apple `kqueue`.
//!
//! # Filters and modes
//!
//! A source is one or two knotes: `EVFILT_READ` for [`Interest::READABLE`],
//! `EVFILT_WRITE` for [`Interest::WRITABLE`], each carrying the key in its
//! pointer-sized `udata`. Modes map to knote flags:
//!
//! | mode          | flags                    |
//! |---------------|--------------------------|
//! | `Level`       | `EV_ADD`                 |
//! | `Edge`        | `EV_ADD EV_CLEAR`        |
//! | `Oneshot`     | `EV_ADD EV_DISPATCH`     |
//! | `EdgeOneshot` | `EV_ADD EV_CLEAR EV_DISPATCH` |
//!
//! Oneshot is `EV_DISPATCH` (disable after delivery), not `EV_ONESHOT`
//! (delete after delivery): a fired registration keeps its knotes, so the
//! kernel can still tell whether the descriptor is registered (see below).
//! With both filters, each knote disarms only itself; `udata` then carries
//! the [`SHARED_ONESHOT`] tag and the wait consults the registry: the first
//! event since arming is reported and disables the other knote; the other
//! filter's event in the same batch (both were ready when `kevent` looked)
//! is merged into it, so that one event carries readable and writable; any
//! later one (in a later wait, or a concurrent one) is dropped. A
//! registration is thus reported at most once until `modify`.
//!
//! The kernel does not update the flags (`EV_CLEAR`, `EV_DISPATCH`) of a
//! knote that exists, so `modify` deletes the old knotes and adds the new
//! ones, in one `kevent` call. Interest `NONE` keeps a single knote, added
//! with `EV_DISABLE`: a disabled knote reports nothing, not even `EV_EOF`.
//! Every change is submitted with `EV_RECEIPT`, so each comes back with its
//! own error, and a failed `add` is rolled back.
//!
//! # Identity and closed descriptors
//!
//! `EV_ADD` on an existing knote silently updates it, so `AlreadyExists` and
//! `NotFound` come from a registry (descriptor → key, interest, mode and
//! which knotes exist). Closing a descriptor drops its knotes from the kernel
//! by itself, but not from the registry; the registry entry is then stale,
//! and its number may be reused for a new file. Because every live
//! registration has at least one knote (fired oneshots and `NONE` included),
//! the kernel settles it:
//!
//! - `add` of a number the registry holds probes the entry's knotes with a
//!   change that has no action flag (it fails with `ENOENT` for a missing
//!   knote and, for an existing one, rewrites the same `udata`): a knote
//!   answers → `AlreadyExists`; all `ENOENT` → the entry is stale, replaced.
//!   For an armed edge registration the probe re-evaluates the knote and
//!   may repeat its current readiness once (a spurious event).
//! - `modify` and `delete` start by deleting the entry's knotes; if all of
//!   them are missing, the entry is stale: it is dropped, whatever `modify`
//!   added is rolled back, and the result is `NotFound`.
//!
//! # Event mapping
//!
//! | kqueue event                             | flags                                        |
//! |------------------------------------------|----------------------------------------------|
//! | `EVFILT_READ`                            | readable                                     |
//! | `EVFILT_READ` + `EV_EOF`                 | readable, read-closed                        |
//! | `EVFILT_READ` + `EV_EOF`, `fflags` ≠ 0   | readable, read-closed, write-closed, error   |
//! | `EVFILT_WRITE`                           | writable                                     |
//! | `EVFILT_WRITE` + `EV_EOF`                | writable, write-closed                       |
//! | `EVFILT_WRITE` + `EV_EOF`, `fflags` ≠ 0  | writable, read-closed, write-closed, error   |
//! | `EV_ERROR` (either filter)               | the filter's readable/writable, error        |
//!
//! The two filters of a source come back as two events with the same key,
//! except for a oneshot registration, whose two events of one batch are
//! merged into one (see above).
//! With `EV_EOF`, a socket's knote carries the socket's pending error
//! (`so_error`: `ECONNRESET`, `ECONNREFUSED`, `ETIMEDOUT`, ...) in `fflags`,
//! 0 for an orderly shutdown. A non-zero one means the connection is dead
//! both ways, so either filter reports error, read-closed and write-closed,
//! as epoll does for a reset. The error stays pending on the socket:
//! `take_error()` or the next read or write returns it. rustix 1.1's `Event`
//! has no accessor for `fflags` of these filters, so the wait retrieves its
//! events with `libc::kevent` into a buffer of `libc::kevent` ([`RawEvents`]);
//! every change still goes through rustix. A socket error without `EV_EOF`
//! (an ICMP error on a connected UDP socket) makes the filter fire but is not
//! reported as error. `EV_ERROR` comes back only for a failed change, which a
//! wait never submits; it is mapped for completeness. Read-closed and
//! write-closed without an error are reported only by a filter that was
//! asked for. `PRIORITY` is not supported: FreeBSD has no `EVFILT_EXCEPT`
//! (libc declares it only for Apple, OpenBSD and DragonFly).
//!
//! # Wake-up
//!
//! `EVFILT_USER` with `NOTE_TRIGGER` where rustix offers it (Apple, FreeBSD,
//! DragonFly); on NetBSD and OpenBSD a non-blocking pipe whose read end is
//! registered level-triggered. An `AtomicBool` coalesces notifications.

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustix::event::Timespec;
use rustix::event::kqueue::{self, EventFilter, EventFlags};
use rustix::io::Errno;

use super::Driver;
use super::unix::{Source, timespec};
use crate::event::flag;
use crate::{Backend, Builder, Event, Events, Interest, Mode};

/// The `udata` of the wake-up knote.
const NOTIFY: usize = usize::MAX;
/// Tag in `udata` of a oneshot registration with both filters (see the
/// module documentation). Keys stay below it, and a tagged key below
/// [`NOTIFY`], because keys are at most `MAX_KEY`.
const SHARED_ONESHOT: usize = 1 << (usize::BITS - 1);

const _: () = assert!(crate::MAX_KEY < SHARED_ONESHOT);
const _: () = assert!((crate::MAX_KEY | SHARED_ONESHOT) < NOTIFY);

/// Changes applied by one `kevent` call (the receipts live on the stack).
const BATCH: usize = 8;

/// A zero timeout: `kevent` calls that only apply changes never block.
const NO_WAIT: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 0,
};

/// The kernel-side buffer of a wait, kept in [`Events`] so concurrent waits
/// need no lock. Raw `libc::kevent`s, not rustix's `Event`, because the wait
/// needs `fflags` (see the module documentation).
pub(crate) struct RawEvents(Vec<MaybeUninit<libc::kevent>>);

// SAFETY: a `libc::kevent` is plain data. Its only pointer, `udata`, holds a
// key or tag that this module stores as an integer and never dereferences,
// so moving or sharing the buffer between threads is sound.
unsafe impl Send for RawEvents {}
// SAFETY: as for `Send`: nothing is ever read through `udata`.
unsafe impl Sync for RawEvents {}

impl RawEvents {
    pub(crate) fn with_capacity(capacity: usize) -> RawEvents {
        let mut v = Vec::new();
        v.resize_with(capacity, MaybeUninit::uninit);
        RawEvents(v)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Filter {
    Read,
    Write,
}

impl Filter {
    fn other(self) -> Filter {
        match self {
            Filter::Read => Filter::Write,
            Filter::Write => Filter::Read,
        }
    }
}

/// Which knotes exist in the kernel for a descriptor.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Knotes {
    read: bool,
    write: bool,
}

impl Knotes {
    fn iter(self) -> impl Iterator<Item = Filter> {
        [(self.read, Filter::Read), (self.write, Filter::Write)]
            .into_iter()
            .filter_map(|(on, f)| on.then_some(f))
    }
    fn with(mut self, f: Filter) -> Knotes {
        match f {
            Filter::Read => self.read = true,
            Filter::Write => self.write = true,
        }
        self
    }
    fn is_empty(self) -> bool {
        !self.read && !self.write
    }
    fn len(self) -> usize {
        usize::from(self.read) + usize::from(self.write)
    }
}

/// A registration, as the registry holds it.
#[derive(Clone, Copy)]
struct Entry {
    key: usize,
    interest: Interest,
    mode: Mode,
    knotes: Knotes,
    /// For a [`SHARED_ONESHOT`] registration: nothing reported since it was
    /// last armed.
    armed: bool,
}

impl Entry {
    fn udata(&self) -> usize {
        udata(self.key, self.interest, self.mode)
    }
}

type Registry = HashMap<RawFd, Entry>;

/// What a wait holds once it meets a [`SHARED_ONESHOT`] event.
struct Shared<'a> {
    registry: MutexGuard<'a, Registry>,
    /// The other knotes of the registrations reported, to disable.
    disable: Vec<kqueue::Event>,
    /// Descriptor → index in the wait's event list of its event.
    reported: HashMap<RawFd, usize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update of the registry is a single insert or remove after the
    // kernel call; a panic cannot leave it half-written. Keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Interest `NONE`, or one with neither direction (priority is refused
/// before it gets here).
fn disarmed(interest: Interest) -> bool {
    !interest.is_readable() && !interest.is_writable()
}

fn udata(key: usize, interest: Interest, mode: Mode) -> usize {
    if mode.is_oneshot() && interest.is_readable() && interest.is_writable() {
        key | SHARED_ONESHOT
    } else {
        key
    }
}

fn mode_flags(mode: Mode) -> EventFlags {
    // rustix has no name for `EV_DISPATCH`, but its `EventFlags` keeps any
    // bit. (`as _`: libc declares it `u16` on most OSes, `u32` on NetBSD.)
    let dispatch = EventFlags::from_bits_retain(libc::EV_DISPATCH as _);
    let mut flags = EventFlags::empty();
    if mode.is_edge() {
        flags |= EventFlags::CLEAR;
    }
    if mode.is_oneshot() {
        flags |= dispatch;
    }
    flags
}

/// One change for `fd`'s knote of `filter`, with a receipt.
fn change(fd: RawFd, filter: Filter, flags: EventFlags, udata: usize) -> kqueue::Event {
    let filter = match filter {
        Filter::Read => EventFilter::Read(fd),
        Filter::Write => EventFilter::Write(fd),
    };
    kqueue::Event::new(
        filter,
        flags | EventFlags::RECEIPT,
        ptr::without_provenance_mut(udata),
    )
}

/// The flags of an event of `filter` (the table in the module documentation).
fn decode(filter: Filter, ev: &libc::kevent) -> u8 {
    let eof = ev.flags & libc::EV_EOF != 0;
    let mut out = match filter {
        Filter::Read if eof => flag::READABLE | flag::READ_CLOSED,
        Filter::Read => flag::READABLE,
        Filter::Write if eof => flag::WRITABLE | flag::WRITE_CLOSED,
        Filter::Write => flag::WRITABLE,
    };
    // With `EV_EOF`, `fflags` is the socket's error (0 after an orderly
    // shutdown): a reset or failed connect, dead in both directions.
    if eof && ev.fflags != 0 {
        out |= flag::ERROR | flag::READ_CLOSED | flag::WRITE_CLOSED;
    }
    if ev.flags & libc::EV_ERROR != 0 {
        out |= flag::ERROR;
    }
    out
}

/// The native bits of an event of `filter`, as `Event::native` documents
/// them: bits 0-15 the `flags`, bit 16 `EVFILT_READ`, bit 17
/// `EVFILT_WRITE`, bits 24-31 the `fflags` capped at 255.
fn native(filter: Filter, ev: &libc::kevent) -> u32 {
    let filter_bit = match filter {
        Filter::Read => 1 << 16,
        Filter::Write => 1 << 17,
    };
    // `as u16`: `flags` is `u16` on most OSes, `u32` on NetBSD, whose flag
    // values fit in 16 bits all the same.
    #[allow(clippy::unnecessary_cast)]
    let flags = u32::from(ev.flags as u16);
    let fflags = ev.fflags.min(255);
    flags | filter_bit | (fflags << 24)
}

/// A kernel timeout for `libc::kevent`, from the one [`timespec`] computes.
fn c_timespec(ts: &Timespec) -> libc::timespec {
    // `timespec` caps a wait at `i32::MAX` milliseconds, so the seconds fit
    // even a 32-bit `time_t`, and the nanoseconds are below 10^9.
    libc::timespec {
        tv_sec: ts.tv_sec as libc::time_t,
        tv_nsec: ts.tv_nsec as libc::c_long,
    }
}

/// At most four changes (two deletes, two adds) and the filter of each.
struct Changes {
    list: [kqueue::Event; 4],
    filters: [Filter; 4],
    len: usize,
}

impl Changes {
    fn new() -> Changes {
        let blank = kqueue::Event::new(EventFilter::Read(-1), EventFlags::empty(), ptr::null_mut());
        Changes {
            list: [blank; 4],
            filters: [Filter::Read; 4],
            len: 0,
        }
    }
    fn push(&mut self, fd: RawFd, filter: Filter, flags: EventFlags, udata: usize) {
        self.list[self.len] = change(fd, filter, flags, udata);
        self.filters[self.len] = filter;
        self.len += 1;
    }
    fn as_slice(&self) -> &[kqueue::Event] {
        &self.list[..self.len]
    }
}

/// What [`Poller::register`] did.
struct Outcome {
    /// The knotes that exist for the descriptor afterwards.
    knotes: Knotes,
    /// Every old knote was missing: the descriptor was closed since it was
    /// registered. Anything added was rolled back.
    stale: bool,
    /// The first failed change (anything added was rolled back).
    error: Option<io::Error>,
}

pub(crate) struct Poller {
    kqueue: OwnedFd,
    registry: Mutex<Registry>,
    waker: Waker,
    /// A wake-up is pending: further `notify` calls need no system call.
    notified: AtomicBool,
}

impl Poller {
    pub(crate) fn new(_: &Builder) -> io::Result<Poller> {
        let kqueue = new_kqueue()?;
        let poller = Poller {
            kqueue,
            registry: Mutex::new(HashMap::new()),
            waker: Waker::new()?,
            notified: AtomicBool::new(false),
        };
        poller.waker.register(&poller)?;
        Ok(poller)
    }

    /// Applies `changes` (each with `EV_RECEIPT`) and calls `each` with the
    /// index and the error of every change, in order.
    fn apply(
        &self,
        changes: &[kqueue::Event],
        mut each: impl FnMut(usize, Option<Errno>),
    ) -> io::Result<()> {
        let mut receipts = [MaybeUninit::<kqueue::Event>::uninit(); BATCH];
        for (n, chunk) in changes.chunks(BATCH).enumerate() {
            // SAFETY: rustix asks that the descriptors named by the changes
            // stay valid while the kqueue lives. The kernel does not rely on
            // that: closing a descriptor removes its knotes from every kqueue,
            // so nothing dangles. `udata` is an integer to the kernel and to
            // us. The receipt buffer is exactly as long as the chunk, and
            // every change carries `EV_RECEIPT`, so the call returns one
            // receipt per change and never dequeues a pending event; the zero
            // timeout keeps it from blocking in any case.
            let (done, _) = unsafe {
                kqueue::kevent_timespec(
                    &self.kqueue,
                    chunk,
                    &mut receipts[..chunk.len()],
                    Some(&NO_WAIT),
                )
            }?;
            if done.len() != chunk.len() {
                return Err(io::Error::other(
                    "kevent returned fewer receipts than changes",
                ));
            }
            for (i, receipt) in done.iter().enumerate() {
                // A receipt is `EV_ERROR` with the errno in `data`, 0 for success.
                let errno = receipt.data();
                let error = if receipt.flags().contains(EventFlags::ERROR) && errno != 0 {
                    Some(Errno::from_raw_os_error(errno as i32))
                } else {
                    None
                };
                each(n * BATCH + i, error);
            }
        }
        Ok(())
    }

    /// Applies one change and returns its error.
    fn apply_one(&self, change: kqueue::Event) -> io::Result<()> {
        let mut result = Ok(());
        self.apply(&[change], |_, e| {
            if let Some(e) = e {
                result = Err(e.into());
            }
        })?;
        result
    }

    /// Deletes `knotes` of `fd`, ignoring failures (a rollback).
    fn forget(&self, fd: RawFd, knotes: Knotes) {
        let mut changes = Changes::new();
        for f in knotes.iter() {
            changes.push(fd, f, EventFlags::DELETE, 0);
        }
        if changes.len > 0 {
            let _ = self.apply(changes.as_slice(), |_, _| {});
        }
    }

    /// Replaces the knotes `old` of `fd` with those of the registration
    /// (`key`, `interest`, `mode`), in one `kevent` call.
    fn register(
        &self,
        fd: RawFd,
        old: Knotes,
        key: usize,
        interest: Interest,
        mode: Mode,
    ) -> Outcome {
        let udata = udata(key, interest, mode);
        let mut changes = Changes::new();
        for f in old.iter() {
            changes.push(fd, f, EventFlags::DELETE, 0);
        }
        let deletes = changes.len;
        if disarmed(interest) {
            // Keep one knote, disabled, so the kernel still knows the
            // descriptor is registered. Prefer a filter the descriptor is
            // known to accept.
            let anchor = if old.write && !old.read {
                Filter::Write
            } else {
                Filter::Read
            };
            changes.push(fd, anchor, EventFlags::ADD | EventFlags::DISABLE, udata);
        } else {
            let flags = EventFlags::ADD | mode_flags(mode);
            if interest.is_readable() {
                changes.push(fd, Filter::Read, flags, udata);
            }
            if interest.is_writable() {
                changes.push(fd, Filter::Write, flags, udata);
            }
        }

        let mut kept = Knotes::default();
        let mut missing = 0;
        let mut added = Knotes::default();
        let mut error: Option<Errno> = None;
        let filters = changes.filters;
        let applied = self.apply(changes.as_slice(), |i, e| {
            let filter = filters[i];
            match (i < deletes, e) {
                (true, None) => {}
                (true, Some(Errno::NOENT)) => missing += 1,
                (true, Some(e)) => {
                    kept = kept.with(filter);
                    error.get_or_insert(e);
                }
                (false, None) => added = added.with(filter),
                (false, Some(e)) => {
                    error.get_or_insert(e);
                }
            }
        });
        if let Err(e) = applied {
            // The call itself failed: assume it changed nothing.
            return Outcome {
                knotes: old,
                stale: false,
                error: Some(e),
            };
        }
        let stale = !old.is_empty() && missing == old.len();
        if stale || error.is_some() {
            self.forget(fd, added);
            return Outcome {
                knotes: kept,
                stale,
                error: error.map(io::Error::from),
            };
        }
        Outcome {
            knotes: added,
            stale: false,
            error: None,
        }
    }

    /// Whether the kernel still holds a knote of `entry`: false when the
    /// descriptor was closed since (its number may now name another file).
    fn still_registered(&self, fd: RawFd, entry: &Entry) -> io::Result<bool> {
        if entry.knotes.is_empty() {
            // Only after a failed `modify`: nothing to ask, trust the entry.
            return Ok(true);
        }
        let mut changes = Changes::new();
        for f in entry.knotes.iter() {
            // No action flag: `ENOENT` for a missing knote; an existing one
            // only has its `udata` rewritten with the value it holds.
            changes.push(fd, f, EventFlags::empty(), entry.udata());
        }
        let mut found = false;
        let mut error = None;
        self.apply(changes.as_slice(), |_, e| match e {
            None => found = true,
            Some(Errno::NOENT) => {}
            Some(e) => {
                error.get_or_insert(e);
            }
        })?;
        match error {
            Some(e) if !found => Err(e.into()),
            _ => Ok(found),
        }
    }
}

/// A close-on-exec kqueue. NetBSD has `kqueue1(O_CLOEXEC)`, which sets the
/// flag atomically (rustix 1.1 has no wrapper; libc 0.2 declares it for
/// NetBSD only). Elsewhere the flag is set after `kqueue()`. That leaves no
/// window where fork does not copy kqueue descriptors into the child:
/// FreeBSD's fork(2) says so, and OpenBSD's regression tests check it. On
/// the other kqueue OSes (Apple, DragonFly) this was not checked here.
fn new_kqueue() -> io::Result<OwnedFd> {
    #[cfg(target_os = "netbsd")]
    {
        use std::os::fd::FromRawFd;
        // SAFETY: `kqueue1` takes only flags and returns a new descriptor
        // or -1.
        let fd = unsafe { libc::kqueue1(libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel, open, and owned by
        // nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
    #[cfg(not(target_os = "netbsd"))]
    {
        let kqueue = kqueue::kqueue()?;
        rustix::io::fcntl_setfd(&kqueue, rustix::io::FdFlags::CLOEXEC)?;
        Ok(kqueue)
    }
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

impl Driver for Poller {
    fn backend(&self) -> Backend {
        Backend::Kqueue
    }
    fn supports_level(&self) -> bool {
        true
    }
    fn supports_edge(&self) -> bool {
        true
    }
    fn supports_priority(&self) -> bool {
        false
    }

    fn add(&self, fd: Source<'_>, key: usize, interest: Interest, mode: Mode) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        let mut registry = lock(&self.registry);
        if let Some(old) = registry.get(&raw) {
            if self.still_registered(raw, old)? {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            // Closed while registered; the number now names a new file.
            registry.remove(&raw);
        }
        let outcome = self.register(raw, Knotes::default(), key, interest, mode);
        if let Some(e) = outcome.error {
            return Err(e);
        }
        registry.insert(
            raw,
            Entry {
                key,
                interest,
                mode,
                knotes: outcome.knotes,
                armed: true,
            },
        );
        Ok(())
    }

    fn modify(&self, fd: Source<'_>, key: usize, interest: Interest, mode: Mode) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        let mut registry = lock(&self.registry);
        let old = *registry.get(&raw).ok_or_else(not_found)?;
        let outcome = self.register(raw, old.knotes, key, interest, mode);
        if outcome.stale {
            registry.remove(&raw);
            return Err(not_found());
        }
        if let Some(e) = outcome.error {
            // The old knotes are gone (unless deleting them failed) and the
            // new ones were rolled back: the source stays registered,
            // disarmed, anchored by a disabled knote if that can be added.
            let mut knotes = outcome.knotes;
            if knotes.is_empty() {
                let anchor = self.register(raw, knotes, key, Interest::NONE, mode);
                if anchor.error.is_none() {
                    knotes = anchor.knotes;
                }
            }
            registry.insert(
                raw,
                Entry {
                    key,
                    interest: Interest::NONE,
                    mode,
                    knotes,
                    armed: false,
                },
            );
            return Err(e);
        }
        registry.insert(
            raw,
            Entry {
                key,
                interest,
                mode,
                knotes: outcome.knotes,
                armed: true,
            },
        );
        Ok(())
    }

    fn delete(&self, fd: Source<'_>) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        let mut registry = lock(&self.registry);
        let entry = registry.remove(&raw).ok_or_else(not_found)?;
        let mut changes = Changes::new();
        for f in entry.knotes.iter() {
            changes.push(raw, f, EventFlags::DELETE, 0);
        }
        if changes.len == 0 {
            return Ok(());
        }
        let mut missing = 0;
        let mut error = None;
        self.apply(changes.as_slice(), |_, e| match e {
            None => {}
            Some(Errno::NOENT) => missing += 1,
            Some(e) => {
                error.get_or_insert(e);
            }
        })?;
        if missing == changes.len {
            // Closed while registered: this descriptor is another file.
            return Err(not_found());
        }
        match error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<bool> {
        // `kevent` takes the count as a C `int` on most OSes.
        let room = events.remaining().min(libc::c_int::MAX as usize);
        let ts = timespec(timeout).map(|ts| c_timespec(&ts));
        let ts_ptr = ts.as_ref().map_or(ptr::null(), ptr::from_ref);
        // Borrow the raw buffer and the event list separately: no copy, no
        // allocation on this path.
        let Events { list, sys, .. } = events;
        let buf = &mut sys.0[..room];
        // SAFETY: the kqueue descriptor is open for the duration of the call
        // (owned by `self`). No changes are passed (null, 0). The event list
        // is `buf.len()` writable slots of `libc::kevent` (`MaybeUninit` has
        // the same layout), and the kernel writes at most that many. The
        // timeout is null (block) or points to `ts`, which outlives the call.
        let n = unsafe {
            libc::kevent(
                self.kqueue.as_raw_fd(),
                ptr::null(),
                0,
                buf.as_mut_ptr().cast::<libc::kevent>(),
                buf.len() as _,
                ts_ptr,
            )
        };
        // A negative return (-1) is a failure, with the error in `errno`;
        // `EINTR` becomes `ErrorKind::Interrupted`.
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        // SAFETY: the kernel filled the first `n` slots (`n <= buf.len()`),
        // so they are initialized `libc::kevent`s; `buf` is not otherwise
        // used while `ready` lives.
        let ready = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<libc::kevent>(), n) };

        let mut notified = false;
        // Taken on the first shared-oneshot event: the registry, the other
        // knotes to disable, and where in `list` this batch reported each
        // descriptor (to merge the other filter's event into it).
        let mut shared: Option<Shared<'_>> = None;
        for ev in ready {
            let data = ev.udata.addr();
            if data == NOTIFY {
                notified = true;
                continue;
            }
            let filter = match ev.filter {
                libc::EVFILT_READ => Filter::Read,
                libc::EVFILT_WRITE => Filter::Write,
                _ => continue,
            };
            // The ident of a read or write knote is the descriptor it watches.
            let fd = ev.ident as RawFd;
            if data & SHARED_ONESHOT != 0 {
                let Shared {
                    registry,
                    disable,
                    reported,
                } = shared.get_or_insert_with(|| Shared {
                    registry: lock(&self.registry),
                    disable: Vec::new(),
                    reported: HashMap::new(),
                });
                match registry.get_mut(&fd) {
                    Some(entry) if entry.armed && entry.udata() == data => {
                        entry.armed = false;
                        disable.push(change(fd, filter.other(), EventFlags::DISABLE, data));
                        reported.insert(fd, list.len());
                    }
                    // The other filter of the arm reported in this batch:
                    // one event with both.
                    Some(entry) if entry.udata() == data && reported.contains_key(&fd) => {
                        let i = reported[&fd];
                        list[i] = list[i].merged(decode(filter, ev), native(filter, ev));
                        continue;
                    }
                    // Reported already since it was armed, or stale.
                    _ => continue,
                }
            }
            list.push(Event::with_native(
                data & !SHARED_ONESHOT,
                decode(filter, ev),
                native(filter, ev),
            ));
        }
        if let Some(Shared {
            registry, disable, ..
        }) = shared
        {
            // Still under the registry lock, so a concurrent `modify` cannot
            // re-arm in between and be disarmed by this. A knote that is gone
            // (descriptor closed) just fails its receipt.
            if !disable.is_empty() {
                let _ = self.apply(&disable, |_, _| {});
            }
            drop(registry);
        }

        if notified {
            // Reset first, then clear the flag: a notify racing with this
            // either finds the flag set (and is folded into this wake-up) or
            // finds it clear and triggers again.
            self.waker.reset();
            self.notified.store(false, Ordering::Release);
        }
        Ok(notified)
    }

    fn notify(&self) -> io::Result<()> {
        if !self.notified.swap(true, Ordering::AcqRel)
            && let Err(e) = self.waker.wake(self)
        {
            self.notified.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }
}

cfg_if::cfg_if! {
    if #[cfg(any(target_vendor = "apple", target_os = "freebsd", target_os = "dragonfly"))] {
        /// Wake-up through an `EVFILT_USER` knote (ident 0, `EV_CLEAR`: it
        /// resets when delivered).
        struct Waker;

        fn user(flags: EventFlags, user_flags: kqueue::UserFlags) -> kqueue::Event {
            kqueue::Event::new(
                EventFilter::User {
                    ident: 0,
                    flags: user_flags,
                    user_flags: kqueue::UserDefinedFlags::new(0),
                },
                flags | EventFlags::RECEIPT,
                ptr::without_provenance_mut(NOTIFY),
            )
        }

        impl Waker {
            fn new() -> io::Result<Waker> {
                Ok(Waker)
            }
            fn register(&self, poller: &Poller) -> io::Result<()> {
                poller.apply_one(user(
                    EventFlags::ADD | EventFlags::CLEAR,
                    kqueue::UserFlags::empty(),
                ))
            }
            fn wake(&self, poller: &Poller) -> io::Result<()> {
                // The trigger rewrites `udata`, so it carries `NOTIFY` too.
                poller.apply_one(user(EventFlags::empty(), kqueue::UserFlags::TRIGGER))
            }
            fn reset(&self) {}
        }
    } else {
        /// Wake-up through a non-blocking pipe whose read end is registered
        /// level-triggered: rustix has no `EVFILT_USER` on this OS.
        struct Waker {
            read: OwnedFd,
            write: OwnedFd,
        }

        impl Waker {
            fn new() -> io::Result<Waker> {
                // `pipe2(O_CLOEXEC | O_NONBLOCK)`: no window for a fork + exec.
                let (read, write) = super::unix::wake_pipe()?;
                Ok(Waker { read, write })
            }
            fn register(&self, poller: &Poller) -> io::Result<()> {
                poller.apply_one(change(
                    self.read.as_raw_fd(),
                    Filter::Read,
                    EventFlags::ADD,
                    NOTIFY,
                ))
            }
            fn wake(&self, _: &Poller) -> io::Result<()> {
                match rustix::io::write(&self.write, &[1]) {
                    // A full pipe wakes the poller already.
                    Ok(_) | Err(Errno::AGAIN) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            fn reset(&self) {
                use std::os::fd::AsFd;
                super::unix::drain(self.read.as_fd());
            }
        }
    }
}
