//! Linux `epoll`, woken by an `eventfd`.
//!
//! The kernel is the only book-keeper: `epoll_ctl` says whether a descriptor
//! is registered (`EEXIST`, `ENOENT`), and a closed descriptor drops out of
//! the interest list by itself, so a reused descriptor number is simply new.
//! The key travels in the 64-bit event data. A registration with interest
//! `NONE` is armed as `EPOLLONESHOT` with no events and its data tagged with
//! [`DISARMED`]: the kernel can still report a hang-up or error for it once,
//! which the wait below swallows.
//!
//! # Timeouts
//!
//! `epoll_wait` takes whole milliseconds. A timeout that is a whole number
//! of milliseconds (or none) goes there, as before. Any other (a
//! sub-millisecond one, or what is left of a deadline) goes to
//! `epoll_pwait2` (Linux 5.11), which takes a `timespec`. Where that system
//! call is missing (`ENOSYS`, or `EPERM` from a seccomp filter that does not
//! know it), the first such wait notes it once for the process, and from
//! then on such waits `ppoll` the epoll descriptor itself with the precise
//! timeout (it turns readable when a wait would return events) and then
//! collect the events with a zero-timeout `epoll_wait`: two system calls,
//! no shared state, so concurrent waits need nothing more. rustix 1.1's
//! `epoll::wait` uses `epoll_pwait2` only with its `linux_5_11` feature,
//! which then fails on older kernels, hence the raw call here.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, epoll};

use super::Driver;
use super::unix::{MAX_WAIT, Source, drain, timespec};
use crate::event::flag;
use crate::{Backend, Builder, Event, Events, Interest, Mode};

/// The event data of the wake-up eventfd.
const NOTIFY: u64 = u64::MAX;
/// Tag of a registration with interest `NONE`. Keys stay below it, and a
/// tagged key stays below [`NOTIFY`], because keys are at most `MAX_KEY`.
const DISARMED: u64 = 1 << 63;

const _: () = assert!((crate::MAX_KEY as u64) < DISARMED);
const _: () = assert!((crate::MAX_KEY as u64 | DISARMED) < NOTIFY);

/// The kernel-side buffer of a wait, kept in [`Events`] so concurrent waits
/// need no lock.
pub(crate) struct RawEvents(Vec<MaybeUninit<epoll::Event>>);

// SAFETY: `epoll::Event` is plain data; it is `!Send` only because its data
// union has a pointer member, which this crate never uses (keys travel as
// `u64`). The buffer is written by the kernel and read by the poller during
// one wait call, never interpreted afterwards.
unsafe impl Send for RawEvents {}
// SAFETY: as above; `&RawEvents` gives no access to the entries.
unsafe impl Sync for RawEvents {}

impl RawEvents {
    pub(crate) fn with_capacity(capacity: usize) -> RawEvents {
        let mut v = Vec::new();
        v.resize_with(capacity, MaybeUninit::uninit);
        RawEvents(v)
    }
}

pub(crate) struct Poller {
    epoll: OwnedFd,
    eventfd: OwnedFd,
    /// A notification is pending in the eventfd: further `notify` calls need
    /// no system call.
    notified: AtomicBool,
}

impl Poller {
    pub(crate) fn new(_: &Builder) -> io::Result<Poller> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let eventfd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(
            &epoll,
            &eventfd,
            epoll::EventData::new_u64(NOTIFY),
            // Edge-triggered: every write is a new edge, so a wake-up needs
            // no read to re-arm it (the counter is reset only if it fills).
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )?;
        Ok(Poller {
            epoll,
            eventfd,
            notified: AtomicBool::new(false),
        })
    }

    pub(crate) fn epoll_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    #[inline]
    fn ctl(
        &self,
        fd: Source<'_>,
        key: usize,
        interest: Interest,
        mode: Mode,
        add: bool,
    ) -> io::Result<()> {
        let (data, flags) = encode(key, interest, mode);
        let data = epoll::EventData::new_u64(data);
        if add {
            epoll::add(&self.epoll, fd, data, flags)?;
        } else {
            epoll::modify(&self.epoll, fd, data, flags)?;
        }
        Ok(())
    }
}

/// `epoll_pwait2` failed with `ENOSYS` or `EPERM` once: this process uses
/// the `ppoll` fallback for precise timeouts (see the module documentation).
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

/// The kernel's `struct __kernel_timespec`: 64-bit fields on every
/// architecture, unlike `libc::timespec` on 32-bit ones.
#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

// The buffer handed to the raw system call is rustix's `epoll::Event`, which
// is the kernel's `struct epoll_event` (packed on x86-64).
const _: () = assert!(size_of::<epoll::Event>() == size_of::<libc::epoll_event>());
const _: () = assert!(align_of::<epoll::Event>() == align_of::<libc::epoll_event>());

impl Poller {
    /// A wait with a timeout that is not whole milliseconds (and below
    /// [`MAX_WAIT`]), kept to the nanosecond the kernel's timers allow.
    fn wait_precise<'a>(
        &self,
        buf: &'a mut [MaybeUninit<epoll::Event>],
        timeout: Duration,
    ) -> io::Result<&'a [epoll::Event]> {
        if !NO_PWAIT2.load(Ordering::Relaxed) {
            match epoll_pwait2(self.epoll.as_fd(), buf, timeout) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                    NO_PWAIT2.store(true, Ordering::Relaxed);
                }
                // `buf` is borrowed again below only when this returned.
                Ok(n) => return Ok(initialized(buf, n)),
                Err(e) => return Err(e),
            }
        }
        self.wait_ppoll(buf, timeout)
    }

    /// The fallback where `epoll_pwait2` is missing: `ppoll` on the epoll
    /// descriptor with the precise timeout, then a zero-timeout look.
    fn wait_ppoll<'a>(
        &self,
        buf: &'a mut [MaybeUninit<epoll::Event>],
        timeout: Duration,
    ) -> io::Result<&'a [epoll::Event]> {
        let ts = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(&self.epoll, PollFlags::IN)];
        if rustix::event::poll(&mut fds, Some(&ts))? == 0 {
            return Ok(&[]);
        }
        // Another waiter may take the events first: then this returns none,
        // early, and the portable loop waits again.
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        Ok(epoll::wait(&self.epoll, buf, Some(&zero))?.0)
    }
}

/// `epoll_pwait2(epfd, buf, buf.len(), timeout, NULL)`: how many entries of
/// `buf` the kernel filled, or the error (`ENOSYS` before Linux 5.11).
fn epoll_pwait2(
    epoll: BorrowedFd<'_>,
    buf: &mut [MaybeUninit<epoll::Event>],
    timeout: Duration,
) -> io::Result<usize> {
    let ts = KernelTimespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    // `Events` holds at most `Events::MAX_CAPACITY` entries, far below
    // `INT_MAX`; the cap only keeps the conversion total.
    let max = buf.len().min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: `epoll_pwait2` takes the epoll descriptor (open: borrowed for
    // the call), a buffer of `max` writable `struct epoll_event`s (`buf` is
    // at least that long, `MaybeUninit<epoll::Event>` has the same layout as
    // `epoll::Event`, which has that of `struct epoll_event`, checked above),
    // a pointer to a `struct __kernel_timespec` (`ts` lives across the call),
    // a null signal mask (none: the signal mask is left alone) and the mask
    // size, ignored with a null mask. The kernel writes at most `max`
    // entries and reads nothing else of ours.
    let n = unsafe {
        libc::syscall(
            libc::SYS_epoll_pwait2,
            epoll.as_raw_fd(),
            buf.as_mut_ptr().cast::<libc::epoll_event>(),
            max,
            &raw const ts,
            std::ptr::null::<libc::sigset_t>(),
            0usize,
        )
    };
    if n < 0 {
        // Taken at once: nothing has run since the call to overwrite errno.
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The first `n` entries of `buf`, which the kernel has just filled.
fn initialized(buf: &mut [MaybeUninit<epoll::Event>], n: usize) -> &[epoll::Event] {
    let n = n.min(buf.len());
    // SAFETY: the kernel wrote `n` (at most `buf.len()`) complete entries at
    // the start of `buf`, so they are initialised; `MaybeUninit<T>` has the
    // layout of `T`; the returned slice keeps `buf` mutably borrowed.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<epoll::Event>(), n) }
}

#[inline]
fn encode(key: usize, interest: Interest, mode: Mode) -> (u64, epoll::EventFlags) {
    use epoll::EventFlags as F;
    if interest.is_none() {
        return (key as u64 | DISARMED, F::ONESHOT);
    }
    let mut flags = F::empty();
    if interest.is_readable() {
        flags |= F::IN | F::RDHUP;
    }
    if interest.is_writable() {
        flags |= F::OUT;
    }
    if interest.is_priority() {
        flags |= F::PRI;
    }
    if mode.is_edge() {
        flags |= F::ET;
    }
    if mode.is_oneshot() {
        flags |= F::ONESHOT;
    }
    (key as u64, flags)
}

#[inline]
fn decode(flags: epoll::EventFlags) -> u8 {
    use epoll::EventFlags as F;
    let mut out = 0;
    if flags.contains(F::IN) {
        out |= flag::READABLE;
    }
    if flags.contains(F::OUT) {
        out |= flag::WRITABLE;
    }
    if flags.contains(F::PRI) {
        out |= flag::PRIORITY;
    }
    if flags.contains(F::RDHUP) {
        out |= flag::READ_CLOSED;
    }
    if flags.contains(F::HUP) {
        out |= flag::READ_CLOSED | flag::WRITE_CLOSED;
    }
    if flags.contains(F::ERR) {
        out |= flag::ERROR;
    }
    out
}

impl Driver for Poller {
    fn backend(&self) -> Backend {
        Backend::Epoll
    }
    fn supports_level(&self) -> bool {
        true
    }
    fn supports_edge(&self) -> bool {
        true
    }
    fn supports_priority(&self) -> bool {
        true
    }

    #[inline]
    fn add(&self, fd: Source<'_>, key: usize, interest: Interest, mode: Mode) -> io::Result<()> {
        self.ctl(fd, key, interest, mode, true)
    }

    #[inline]
    fn modify(&self, fd: Source<'_>, key: usize, interest: Interest, mode: Mode) -> io::Result<()> {
        self.ctl(fd, key, interest, mode, false)
    }

    #[inline]
    fn delete(&self, fd: Source<'_>) -> io::Result<()> {
        Ok(epoll::delete(&self.epoll, fd)?)
    }

    #[inline]
    fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<bool> {
        let room = events.remaining();
        // Borrow the raw buffer and the event list separately: no copy, no
        // allocation on this path.
        let Events { list, sys, .. } = events;
        let buf = &mut sys.0[..room];
        let ready: &[epoll::Event] = match timeout {
            Some(t) if t.subsec_nanos() % 1_000_000 != 0 && t < MAX_WAIT => {
                self.wait_precise(buf, t)?
            }
            _ => {
                let ts = timespec(timeout);
                epoll::wait(&self.epoll, buf, ts.as_ref())?.0
            }
        };
        let mut notified = false;
        for ev in ready.iter() {
            let data = ev.data.u64();
            if data == NOTIFY {
                notified = true;
            } else if data & DISARMED == 0 {
                let flags = ev.flags; // a copy: the struct is packed on x86-64
                list.push(Event::with_native(
                    data as usize,
                    decode(flags),
                    flags.bits(),
                ));
            }
        }
        if notified {
            // No drain: the registration is edge-triggered. A notify racing
            // with this either finds the flag set (and is folded into this
            // wake-up) or finds it clear and writes again: a new edge.
            self.notified.store(false, Ordering::Release);
        }
        Ok(notified)
    }

    #[inline]
    fn notify(&self) -> io::Result<()> {
        if !self.notified.swap(true, Ordering::AcqRel) {
            let one = 1u64.to_ne_bytes();
            let mut result = rustix::io::write(&self.eventfd, &one);
            if result == Err(rustix::io::Errno::AGAIN) {
                // The counter is full (after 2^64 - 2 wake-ups): reset it.
                drain(self.eventfd.as_fd());
                result = rustix::io::write(&self.eventfd, &one);
            }
            if let Err(e) = result {
                self.notified.store(false, Ordering::Release);
                return Err(e.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The precise-timeout paths, each on its own: the conformance suite
    //! only reaches the one this kernel takes (`epoll_pwait2` from 5.11).

    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    use super::*;

    type Path = fn(&Poller, &mut [MaybeUninit<epoll::Event>], Duration) -> io::Result<usize>;

    fn via_pwait2(
        p: &Poller,
        buf: &mut [MaybeUninit<epoll::Event>],
        t: Duration,
    ) -> io::Result<usize> {
        epoll_pwait2(p.epoll.as_fd(), buf, t)
    }

    fn via_ppoll(
        p: &Poller,
        buf: &mut [MaybeUninit<epoll::Event>],
        t: Duration,
    ) -> io::Result<usize> {
        p.wait_ppoll(buf, t).map(<[_]>::len)
    }

    fn check(path: Path) {
        let poller = Poller::new(&Builder::new()).unwrap();
        let mut buf = RawEvents::with_capacity(8);
        // Times out after the timeout, and (the shortest of 100) well
        // before a millisecond.
        let timeout = Duration::from_micros(100);
        let mut shortest = Duration::MAX;
        for _ in 0..100 {
            let start = Instant::now();
            assert_eq!(path(&poller, &mut buf.0, timeout).unwrap(), 0);
            let elapsed = start.elapsed();
            assert!(elapsed >= timeout, "{elapsed:?}");
            shortest = shortest.min(elapsed);
        }
        assert!(shortest < Duration::from_micros(900), "{shortest:?}");

        // Reports a ready source, and a notification.
        let (mut a, b) = UnixStream::pair().unwrap();
        poller
            .add(b.as_fd(), 5, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        a.write_all(b"x").unwrap();
        poller.notify().unwrap();
        let mut data = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while data.len() < 2 && Instant::now() < deadline {
            let n = path(&poller, &mut buf.0, Duration::from_micros(1500)).unwrap();
            data.extend(initialized(&mut buf.0, n).iter().map(|e| e.data.u64()));
        }
        data.sort_unstable();
        assert_eq!(data, [5, NOTIFY]);
    }

    #[test]
    fn epoll_pwait2_keeps_sub_millisecond_timeouts() {
        let poller = Poller::new(&Builder::new()).unwrap();
        let mut buf = RawEvents::with_capacity(1);
        match epoll_pwait2(poller.epoll.as_fd(), &mut buf.0, Duration::ZERO) {
            Ok(0) => check(via_pwait2),
            Ok(n) => panic!("{n} events from an empty epoll set"),
            // A kernel before 5.11 (or a seccomp filter): the fallback.
            Err(e) => {
                assert!(matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)));
                eprintln!("epoll_pwait2 is not available here: {e}");
            }
        }
    }

    #[test]
    fn ppoll_fallback_keeps_sub_millisecond_timeouts() {
        check(via_ppoll);
    }
}
