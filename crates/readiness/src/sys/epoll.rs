//! Linux `epoll`, woken by an `eventfd`.
//!
//! The kernel is the only book-keeper: `epoll_ctl` says whether a descriptor
//! is registered (`EEXIST`, `ENOENT`), and a closed descriptor drops out of
//! the interest list by itself, so a reused descriptor number is simply new.
//! The key travels in the 64-bit event data. A registration with interest
//! `NONE` is armed as `EPOLLONESHOT` with no events and its data tagged with
//! [`DISARMED`]: the kernel can still report a hang-up or error for it once,
//! which the wait below swallows.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::event::{EventfdFlags, epoll};

use super::Driver;
use super::unix::{Source, drain, timespec};
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
        let ts = timespec(timeout);
        // Borrow the raw buffer and the event list separately: no copy, no
        // allocation on this path.
        let Events { list, sys, .. } = events;
        let (ready, _) = epoll::wait(&self.epoll, &mut sys.0[..room], ts.as_ref())?;
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
