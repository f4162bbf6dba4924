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
//!
//! # Identity and closed descriptors
//!
//! `poll(2)` knows descriptors only by number, and a number closed without
//! `delete` is soon given to a new file (the lowest free number is the next
//! one allocated). So a registration also records the file it was made for:
//! its device and inode numbers (`fstat`), unique among open files. Then:
//!
//! - `add` of a number the map holds compares the file: the same one is
//!   `AlreadyExists`; another one means the old registration is stale (its
//!   descriptor was closed), and it is replaced.
//! - `modify` and `delete` of a number whose recorded file differs drop the
//!   stale registration and fail with `NotFound`.
//! - A wait checks the file of every registration it is about to report:
//!   a descriptor closed meanwhile is dropped without an event, whether the
//!   kernel said `POLLNVAL` (nothing has the number now) or polled whatever
//!   new file has the number.
//!
//! The cost is one `fstat` per `add`, `modify` and `delete` (where `add` used
//! to make an `fcntl` to report a bad descriptor) and one per event reported.
//! A disarmed registration (fired oneshot, interest `NONE`) is not in the
//! array the kernel polls, so a close of it is noticed only when its number
//! is next used with this poller; until then it costs a map entry.
//!
//! [`notify`]: Driver::notify

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::Driver;
use super::unix::{Source, drain, wake_pipe};
use crate::event::flag;
use crate::{Backend, Builder, Event, Events, Interest, Mode};

#[cfg(any(target_os = "linux", target_os = "android"))]
const RDHUP: libc::c_short = libc::POLLRDHUP;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const RDHUP: libc::c_short = 0;

/// Which file a descriptor names: unique among the open files.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileId {
    dev: u64,
    ino: u64,
}

/// The file descriptor number `fd` names now.
fn file_id(fd: RawFd) -> io::Result<FileId> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fstat` writes one `struct stat` through the pointer, which is
    // valid, aligned and large enough for it, and reads nothing of ours. The
    // descriptor is a plain number to the kernel: a closed one fails with
    // `EBADF`, a reused one describes the file it names now; telling those
    // apart from the registered file is what the callers use this for.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        // Taken at once: nothing has run since the call to overwrite errno.
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fstat` succeeded, so it filled the whole struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ per OS
    Ok(FileId {
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
    })
}

struct Entry {
    key: usize,
    interest: Interest,
    mode: Mode,
    /// The file the registration was made for.
    file: FileId,
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
        let (wake_read, wake_write) = wake_pipe()?;
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
        let raw = fd.as_raw_fd();
        // Also reports a bad descriptor as the OS does, as epoll would.
        let file = file_id(raw)?;
        let mut state = lock(&self.state);
        if let Some((slot, entry)) = state.entries.get(&raw) {
            if entry.file == file {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            // Closed without `delete`; the number now names another file.
            let slot = *slot;
            state.entries.remove(&raw);
            remove_slot(&mut state, slot);
        }
        let slot = state.pollfds.len();
        state.pollfds.push(slot_pollfd(raw, interest));
        state.slots.push(raw);
        let generation = state.generation + 1;
        let entry = Entry {
            key,
            interest,
            mode,
            file,
            generation,
        };
        state.entries.insert(raw, (slot, entry));
        self.changed(&mut state);
        Ok(())
    }

    fn modify(&self, fd: Source<'_>, key: usize, interest: Interest, mode: Mode) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        let file = file_id(raw)?;
        let mut state = lock(&self.state);
        let generation = state.generation + 1;
        let slot = registered(&mut state, raw, file)?;
        let (_, entry) = state.entries.get_mut(&raw).ok_or_else(not_found)?;
        *entry = Entry {
            key,
            interest,
            mode,
            file,
            generation,
        };
        state.pollfds[slot] = slot_pollfd(raw, interest);
        self.changed(&mut state);
        Ok(())
    }

    fn delete(&self, fd: Source<'_>) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        let file = file_id(raw)?;
        let mut state = lock(&self.state);
        let slot = registered(&mut state, raw, file)?;
        state.entries.remove(&raw);
        remove_slot(&mut state, slot);
        self.changed(&mut state);
        Ok(())
    }

    fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<bool> {
        // The deadline is fixed now: time spent queued at the gate counts.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let Some(_turn) = self.gate.enter(deadline) else {
            return Ok(false); // timed out while another thread polled
        };
        // What is left after the gate; a timeout too large for an `Instant`
        // is kept as it is (it is cut to what `poll` takes below).
        let timeout = match deadline {
            Some(deadline) => Some(deadline.saturating_duration_since(Instant::now())),
            None => timeout,
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
        // Before anything else: taking a contended lock can overwrite errno
        // (a futex call failing with `EAGAIN`), turning `EINTR` into
        // `WouldBlock`.
        let error = (n < 0).then(io::Error::last_os_error);

        let mut state = lock(&self.state);
        state.polling = false;
        if let Some(error) = error {
            return Err(error);
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
            let Some((slot, entry)) = state.entries.get(&fd) else {
                continue; // deleted meanwhile
            };
            if entry.generation != generation {
                continue; // modified meanwhile: what was polled for is stale
            }
            let (slot, key, file, oneshot) =
                (*slot, entry.key, entry.file, entry.mode.is_oneshot());
            let flags = decode(pfd.revents, entry.interest);
            let invalid = pfd.revents & libc::POLLNVAL != 0;
            if flags == 0 && !invalid {
                continue;
            }
            // `POLLNVAL`: nothing has the number now. Otherwise the number
            // may name another file since a close without `delete`, and the
            // kernel polled that one. Either way: forget it, report nothing.
            if invalid || file_id(fd).ok() != Some(file) {
                state.entries.remove(&fd);
                remove_slot(&mut state, slot);
                continue;
            }
            // The native bits: `revents`, zero-extended from its C `short`.
            events.push(Event::with_native(
                key,
                flags,
                u32::from(pfd.revents as u16),
            ));
            if oneshot {
                if let Some((_, entry)) = state.entries.get_mut(&fd) {
                    entry.interest = Interest::NONE;
                }
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
    /// Waits for the turn, until `deadline` at most (`None`: no limit).
    fn enter(&self, deadline: Option<Instant>) -> Option<Turn<'_>> {
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

/// The slot of the registration of `fd` if it was made for `file`. A
/// registration made for another file is stale (its descriptor was closed
/// without `delete` and the number reused): it is dropped, and the answer is
/// `NotFound`, as for a number never registered.
fn registered(state: &mut State, fd: RawFd, file: FileId) -> io::Result<usize> {
    let (slot, entry) = state.entries.get(&fd).ok_or_else(not_found)?;
    if entry.file == file {
        return Ok(*slot);
    }
    let slot = *slot;
    state.entries.remove(&fd);
    remove_slot(state, slot);
    Err(not_found())
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}
