//! `poll(2)`: the portable Unix fallback.
//!
//! The poller keeps the `pollfd` array itself, in step with a map from
//! descriptor to registration, so a wait copies the array instead of
//! rebuilding it. A pipe wakes a blocked `poll` both for [`notify`] and for
//! changes to the registrations (the new set must be polled). Waits are
//! serialised: one thread polls at a time, others queue at the [`Gate`], each
//! for no longer than its own timeout.
//!
//! Level-triggered and oneshot modes only: `poll(2)` has no edge triggering.
//! A descriptor closed while registered comes back as `POLLNVAL`; its
//! registration is then dropped without an event.
//!
//! [`notify`]: Driver::notify

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::Driver;
use super::unix::{Source, drain};
use crate::event::flag;
use crate::{Backend, Builder, Event, Events, Interest, Mode};

#[cfg(any(target_os = "linux", target_os = "android"))]
const RDHUP: libc::c_short = libc::POLLRDHUP;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const RDHUP: libc::c_short = 0;

struct Entry {
    key: usize,
    interest: Interest,
    mode: Mode,
    /// Bumped on every change, so a wait can tell that what it polled for is
    /// no longer what is registered.
    generation: u64,
}

#[derive(Default)]
struct State {
    /// Slot 0 is the wake-up pipe; slot `i > 0` belongs to `slots[i]`.
    /// A disarmed registration (interest `NONE`, or a oneshot that fired) has
    /// descriptor -1 in its slot, which `poll` skips: with the real descriptor
    /// and no events, `poll` would still return at once for a hang-up.
    pollfds: Vec<libc::pollfd>,
    slots: Vec<RawFd>,
    entries: HashMap<RawFd, (usize, Entry)>,
    generation: u64,
    /// A thread is inside `poll` and must be woken when the set changes.
    polling: bool,
    /// A wake-up byte is in the pipe already.
    wake_pending: bool,
}

/// What one wait polled: the array, and each slot's descriptor and
/// generation then.
#[derive(Default)]
struct WaitBuf {
    pollfds: Vec<libc::pollfd>,
    slots: Vec<(RawFd, u64)>,
    /// The slot where the next wait starts reporting: the first ready one a
    /// full buffer left out, so that level-triggered sources early in the
    /// array cannot starve later ones.
    next: usize,
}

pub(crate) struct Poller {
    state: Mutex<State>,
    gate: Gate,
    /// Only taken by the thread that passed the gate: never contended.
    wait_lock: Mutex<WaitBuf>,
    wake_read: OwnedFd,
    wake_write: OwnedFd,
    notified: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave `State` half-updated in a
    // way that breaks memory safety; keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// The slot of a registration: disarmed ones are skipped by `poll`.
fn slot_pollfd(fd: RawFd, interest: Interest) -> libc::pollfd {
    if interest.is_none() {
        pollfd(-1, 0)
    } else {
        pollfd(fd, mask(interest))
    }
}

fn mask(interest: Interest) -> libc::c_short {
    let mut m = 0;
    if interest.is_readable() {
        m |= libc::POLLIN | RDHUP;
    }
    if interest.is_writable() {
        m |= libc::POLLOUT;
    }
    if interest.is_priority() {
        m |= libc::POLLPRI;
    }
    m
}

fn decode(revents: libc::c_short, interest: Interest) -> u8 {
    let mut out = 0;
    if revents & libc::POLLIN != 0 && interest.is_readable() {
        out |= flag::READABLE;
    }
    if revents & libc::POLLOUT != 0 && interest.is_writable() {
        out |= flag::WRITABLE;
    }
    if revents & libc::POLLPRI != 0 && interest.is_priority() {
        out |= flag::PRIORITY;
    }
    #[allow(clippy::bad_bit_mask)] // RDHUP is 0 where the OS lacks it
    if RDHUP != 0 && revents & RDHUP != 0 && interest.is_readable() {
        out |= flag::READ_CLOSED;
    }
    if revents & libc::POLLHUP != 0 {
        out |= flag::READ_CLOSED | flag::WRITE_CLOSED;
    }
    if revents & libc::POLLERR != 0 {
        out |= flag::ERROR;
    }
    out
}

impl Poller {
    pub(crate) fn new(_: &Builder) -> io::Result<Poller> {
        let (wake_read, wake_write) = rustix::pipe::pipe()?;
        for fd in [&wake_read, &wake_write] {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
            rustix::io::ioctl_fionbio(fd, true)?;
        }
        let state = State {
            pollfds: vec![pollfd(wake_read.as_raw_fd(), libc::POLLIN)],
            slots: vec![-1],
            ..State::default()
        };
        Ok(Poller {
            state: Mutex::new(state),
            gate: Gate::default(),
            wait_lock: Mutex::new(WaitBuf::default()),
            wake_read,
            wake_write,
            notified: AtomicBool::new(false),
        })
    }

    /// Wakes the polling thread, if any, so it polls the changed set.
    fn changed(&self, state: &mut State) {
        state.generation += 1;
        if state.polling && !state.wake_pending {
            state.wake_pending = true;
            self.wake();
        }
    }

    fn wake(&self) {
        // A full pipe already wakes the poller; any other error cannot be
        // acted on here and leaves the pipe as it was.
        let _ = rustix::io::write(&self.wake_write, &[1]);
    }
}

impl Driver for Poller {
    fn backend(&self) -> Backend {
        Backend::Poll
    }
    fn supports_level(&self) -> bool {
        true
    }
    fn supports_edge(&self) -> bool {
        false
    }
    fn supports_priority(&self) -> bool {
        true
    }

    fn add(&self, fd: Source<'_>, key: usize, interest: Interest, mode: Mode) -> io::Result<()> {
        // Report a bad descriptor as the OS does, as epoll would.
        rustix::io::fcntl_getfd(fd)?;
        let raw = fd.as_raw_fd();
        let mut state = lock(&self.state);
        if state.entries.contains_key(&raw) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let slot = state.pollfds.len();
        state.pollfds.push(slot_pollfd(raw, interest));
        state.slots.push(raw);
        let generation = state.generation + 1;
        let entry = Entry {
            key,
            interest,
            mode,
            generation,
        };
        state.entries.insert(raw, (slot, entry));
        self.changed(&mut state);
        Ok(())
    }

    fn modify(&self, fd: Source<'_>, key: usize, interest: Interest, mode: Mode) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        let mut state = lock(&self.state);
        let generation = state.generation + 1;
        let slot = {
            let (slot, entry) = state.entries.get_mut(&raw).ok_or_else(not_found)?;
            *entry = Entry {
                key,
                interest,
                mode,
                generation,
            };
            *slot
        };
        state.pollfds[slot] = slot_pollfd(raw, interest);
        self.changed(&mut state);
        Ok(())
    }

    fn delete(&self, fd: Source<'_>) -> io::Result<()> {
        let mut state = lock(&self.state);
        let (slot, _) = state
            .entries
            .remove(&fd.as_raw_fd())
            .ok_or_else(not_found)?;
        remove_slot(&mut state, slot);
        self.changed(&mut state);
        Ok(())
    }

    fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<bool> {
        let Some(_turn) = self.gate.enter(timeout) else {
            return Ok(false); // timed out while another thread polled
        };
        let mut buf = lock(&self.wait_lock);
        let WaitBuf {
            pollfds,
            slots,
            next,
        } = &mut *buf;
        {
            let mut state = lock(&self.state);
            pollfds.clear();
            pollfds.extend_from_slice(&state.pollfds);
            slots.clear();
            slots.extend(state.slots.iter().map(|fd| {
                let generation = state.entries.get(fd).map_or(0, |(_, e)| e.generation);
                (*fd, generation)
            }));
            state.polling = true;
        }

        let timeout_ms = match timeout {
            None => -1,
            // Round up so that the portable layer never spins on a timeout
            // shorter than a millisecond.
            Some(t) => t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int,
        };
        // SAFETY: `pollfds` is a valid, initialised array of `pollfds.len()`
        // `pollfd`s that lives across the call and is not otherwise touched
        // until it returns. The descriptors are plain numbers to the kernel:
        // one closed meanwhile comes back as `POLLNVAL`, nothing worse.
        let n = unsafe {
            libc::poll(
                pollfds.as_mut_ptr(),
                pollfds.len() as libc::nfds_t,
                timeout_ms,
            )
        };

        let mut state = lock(&self.state);
        state.polling = false;
        if n < 0 {
            return Err(io::Error::last_os_error());
        }

        let mut woken = false;
        if pollfds[0].revents != 0 {
            drain(self.wake_read.as_fd());
            state.wake_pending = false;
            woken = self.notified.swap(false, Ordering::AcqRel);
        }
        let start = if (1..pollfds.len()).contains(next) {
            *next
        } else {
            1
        };
        for i in (start..pollfds.len()).chain(1..start) {
            let (pfd, (fd, generation)) = (&pollfds[i], slots[i]);
            if pfd.revents == 0 {
                continue;
            }
            if events.remaining() == 0 {
                *next = i;
                break;
            }
            let Some((slot, entry)) = state.entries.get_mut(&fd) else {
                continue; // deleted meanwhile
            };
            if entry.generation != generation {
                continue; // modified meanwhile: what was polled for is stale
            }
            let slot = *slot;
            if pfd.revents & libc::POLLNVAL != 0 {
                // Closed while registered: forget it, report nothing.
                state.entries.remove(&fd);
                remove_slot(&mut state, slot);
                continue;
            }
            let flags = decode(pfd.revents, entry.interest);
            if flags == 0 {
                continue;
            }
            // The native bits: `revents`, zero-extended from its C `short`.
            events.push(Event::with_native(
                entry.key,
                flags,
                u32::from(pfd.revents as u16),
            ));
            if entry.mode.is_oneshot() {
                entry.interest = Interest::NONE;
                state.pollfds[slot] = pollfd(-1, 0);
            }
        }
        Ok(woken)
    }

    fn notify(&self) -> io::Result<()> {
        // A full pipe (`EAGAIN`) already holds a wake-up.
        if !self.notified.swap(true, Ordering::AcqRel)
            && let Err(e) = rustix::io::write(&self.wake_write, &[1])
            && e != rustix::io::Errno::AGAIN
        {
            self.notified.store(false, Ordering::Release);
            return Err(e.into());
        }
        Ok(())
    }
}

/// Lets one wait at a time through; the others queue, but (unlike at a
/// mutex) no longer than their timeout.
#[derive(Default)]
struct Gate {
    busy: Mutex<bool>,
    free: Condvar,
}

impl Gate {
    /// Waits for the turn, for at most `timeout` (`None`: no limit).
    fn enter(&self, timeout: Option<Duration>) -> Option<Turn<'_>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut busy = lock(&self.busy);
        while *busy {
            busy = match deadline {
                Some(deadline) => {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    self.free
                        .wait_timeout(busy, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self.free.wait(busy).unwrap_or_else(PoisonError::into_inner),
            };
        }
        *busy = true;
        Some(Turn(self))
    }
}

/// The turn at the [`Gate`], given back when dropped.
struct Turn<'a>(&'a Gate);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *lock(&self.0.busy) = false;
        self.0.free.notify_one();
    }
}

/// Removes slot `slot` from the array, moving the last slot into its place.
fn remove_slot(state: &mut State, slot: usize) {
    state.pollfds.swap_remove(slot);
    state.slots.swap_remove(slot);
    if let Some(&moved) = state.slots.get(slot)
        && let Some((s, _)) = state.entries.get_mut(&moved)
    {
        *s = slot;
    }
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}
