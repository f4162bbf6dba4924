//! The reactor: one [`Poller`], the table of registered sources, the timers,
//! and the right to wait on the poller.
//!
//! # Invariants
//!
//! - **Lock order.** `driver` (the right to wait) before `sources` before a
//!   source's `state`; `timers` and `idle` are never held together with any
//!   other lock. No lock is held while a waker is woken: wakers are collected
//!   into a vector and woken after every lock but `driver` is released.
//! - **One waiter on the poller.** Only the holder of the `driver` lock calls
//!   `Poller::wait`, so the `Events` buffer and the scratch waker vector in it
//!   are never shared.
//! - **Readiness is a flag plus a tick, per direction.** An event sets the
//!   direction's `ready` flag and bumps its `tick`; a task that tried an
//!   operation and got `WouldBlock` clears the flag *only if the tick is the
//!   one it saw* when it decided to try. So a readiness reported while the task
//!   was busy (between its last check and its `WouldBlock`) is never lost:
//!   the tick moved, the flag stays set, and the task tries again.
//!   `read_closed` and `write_closed` are final and never cleared: after a
//!   peer's FIN (or a reset) every wait in that direction completes at once.
//! - **Mode per backend, one rule** ([`Reactor::registration_mode`]): where
//!   the poller has edge triggering (epoll, kqueue) a source is registered
//!   once, for both directions, `Mode::Edge`, and never modified. Elsewhere
//!   (poll(2), Windows AFD) it is registered with interest `NONE`,
//!   `Mode::Oneshot`, and *a task that starts waiting* re-arms it with
//!   `modify` (the union of the directions tasks wait on), because only the
//!   task holds the source (`modify` borrows it). After a oneshot event the
//!   registration is disarmed, so every waiter of the source is woken, also
//!   those of the direction that was not reported: they find no readiness and
//!   re-arm it themselves.
//! - **Stale events are harmless.** A wait running on one thread while another
//!   thread deregisters a source may still report its key, and the key may
//!   already belong to a new source. That only sets readiness the new source
//!   does not have; its next operation gets `WouldBlock` and waits again.
//! - **Keys** come from a slab and stay far below `readiness::MAX_KEY`.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use readiness::{AsSource, Backend, Event, Events, Interest, Mode, Poller};
use slab::Slab;

use crate::driver::{self, Parker};

/// Index of the read direction in a source's state.
pub(crate) const READ: usize = 0;
/// Index of the write direction in a source's state.
pub(crate) const WRITE: usize = 1;

/// The global reactor, created by the first user (or by [`Reactor::install`]).
static GLOBAL: OnceLock<Reactor> = OnceLock::new();
/// Serialises the creation of [`GLOBAL`] (creation can fail and be retried).
static INIT: Mutex<()> = Mutex::new(());

/// Locks `mutex`, ignoring poisoning: no code here leaves a guarded value
/// half-updated when it panics (wakers run outside every lock but `driver`).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The I/O reactor: the poller every [`Async`](crate::Async) is registered
/// with and every [`Timer`](crate::Timer) is kept by.
///
/// There is one per process, created on first use on the OS's default
/// backend ([`Reactor::global`]), or earlier on a chosen backend with
/// [`Reactor::install`]. It is driven (its poller waited on, its timers
/// fired, its tasks woken) by whichever thread is blocked in
/// [`block_on`](crate::block_on), or, when no thread is, by a fallback thread
/// named `readiness-async` that it starts when it is created.
pub struct Reactor {
    pub(crate) poller: Poller,
    /// Registration rule: `Mode::Edge` or `Mode::Oneshot` (see the module docs).
    edge: bool,
    /// Registered sources by key.
    sources: Mutex<Slab<Arc<Source>>>,
    /// Pending timers in deadline order; the `u64` tells apart timers with
    /// the same deadline.
    timers: Mutex<BTreeMap<(Instant, u64), Waker>>,
    /// The right to wait on the poller, and the buffers a wait uses.
    driver: Mutex<DriverBuffers>,
    /// Threads between "about to compute a wait's deadline" and "wait
    /// returned": a new earliest timer must wake them.
    waiting: AtomicUsize,
    /// Rounds of [`ReactorLock::react`] so far (wrapping).
    rounds: AtomicUsize,
    /// Threads inside `block_on`.
    pub(crate) block_on_count: AtomicUsize,
    /// The fallback thread holds `driver` for a blocking wait.
    pub(crate) fallback_driving: AtomicBool,
    /// The fallback thread, to unpark it.
    pub(crate) fallback: OnceLock<Thread>,
    /// `block_on` threads that found the reactor taken and sleep until their
    /// future is woken; one of them is handed the reactor when its driver
    /// leaves (see `driver.rs`).
    pub(crate) idle: Mutex<Vec<Arc<Parker>>>,
    pub(crate) idle_len: AtomicUsize,
}

struct DriverBuffers {
    events: Events,
    wakers: Vec<Waker>,
}

impl Reactor {
    /// The process's reactor, created on the OS's default backend
    /// ([`readiness::Backend::default_for_os`]) if it does not exist yet.
    ///
    /// # Panics
    ///
    /// If the reactor does not exist and its poller cannot be created (the
    /// process is out of descriptors or handles). [`Async::new`] reports that
    /// as an error instead.
    ///
    /// [`Async::new`]: crate::Async::new
    pub fn global() -> &'static Reactor {
        match Reactor::try_global() {
            Ok(reactor) => reactor,
            Err(e) => panic!("readiness-async: cannot create the reactor's poller: {e}"),
        }
    }

    /// Creates the process's reactor with a poller from `builder` (to choose
    /// the backend, or Windows settings) and returns it.
    ///
    /// Fails with [`ErrorKind::AlreadyExists`](io::ErrorKind::AlreadyExists)
    /// if the reactor exists already: it is created by the first
    /// [`Async`](crate::Async), polled [`Timer`](crate::Timer) or
    /// [`block_on`](crate::block_on), so call this first. Fails with the
    /// poller's error if the poller cannot be built (e.g.
    /// [`Unsupported`](io::ErrorKind::Unsupported) for a backend this OS
    /// lacks).
    pub fn install(builder: readiness::Builder) -> io::Result<&'static Reactor> {
        Reactor::init(builder, true)
    }

    pub(crate) fn try_global() -> io::Result<&'static Reactor> {
        match GLOBAL.get() {
            Some(reactor) => Ok(reactor),
            None => Reactor::init(readiness::Builder::new(), false),
        }
    }

    fn init(builder: readiness::Builder, explicit: bool) -> io::Result<&'static Reactor> {
        let _guard = lock(&INIT);
        if let Some(reactor) = GLOBAL.get() {
            if explicit {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "the readiness-async reactor exists already (on the {} backend); \
                         Reactor::install must come before any Async, Timer or block_on",
                        reactor.backend()
                    ),
                ));
            }
            return Ok(reactor);
        }
        let poller = builder.build()?;
        let edge = poller.supports_edge();
        let reactor = GLOBAL.get_or_init(|| Reactor {
            poller,
            edge,
            sources: Mutex::new(Slab::new()),
            timers: Mutex::new(BTreeMap::new()),
            driver: Mutex::new(DriverBuffers {
                events: Events::new(),
                wakers: Vec::new(),
            }),
            waiting: AtomicUsize::new(0),
            rounds: AtomicUsize::new(0),
            block_on_count: AtomicUsize::new(0),
            fallback_driving: AtomicBool::new(false),
            fallback: OnceLock::new(),
            idle: Mutex::new(Vec::new()),
            idle_len: AtomicUsize::new(0),
        });
        driver::spawn_fallback(reactor);
        tracing::debug!(backend = %reactor.backend(), edge, "readiness-async reactor created");
        Ok(reactor)
    }

    /// The poller's backend.
    pub fn backend(&self) -> Backend {
        self.poller.backend()
    }

    /// How sources are registered: [`Mode::Edge`] where the backend has edge
    /// triggering (epoll, kqueue), otherwise [`Mode::Oneshot`], re-armed each
    /// time a task waits (poll(2), Windows AFD). Informational: behaviour is
    /// the same either way.
    pub fn registration_mode(&self) -> Mode {
        if self.edge { Mode::Edge } else { Mode::Oneshot }
    }

    /// How many sources are registered now (diagnostics).
    pub fn registered(&self) -> usize {
        lock(&self.sources).len()
    }

    /// How many timers are pending now (diagnostics).
    pub fn pending_timers(&self) -> usize {
        lock(&self.timers).len()
    }

    pub(crate) fn rounds(&self) -> usize {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Wakes the thread blocked on the poller, if any (or the next wait).
    pub(crate) fn notify(&self) {
        if let Err(e) = self.poller.notify() {
            tracing::error!("readiness-async: notify failed: {e}");
        }
    }

    /// Registers `io` and returns its source.
    pub(crate) fn insert(&'static self, io: &impl AsSource) -> io::Result<Arc<Source>> {
        let source = {
            let mut sources = lock(&self.sources);
            let entry = sources.vacant_entry();
            let source = Arc::new(Source::new(self, entry.key()));
            entry.insert(source.clone());
            source
        };
        let (interest, mode) = if self.edge {
            (Interest::BOTH, Mode::Edge)
        } else {
            (Interest::NONE, Mode::Oneshot)
        };
        if let Err(e) = self.poller.add(io, source.key, interest, mode) {
            lock(&self.sources).try_remove(source.key);
            return Err(e);
        }
        Ok(source)
    }

    /// Deregisters `io` (whose source is `source`) and wakes whatever waker
    /// the source still holds.
    pub(crate) fn remove(&self, source: &Source, io: &impl AsSource) -> io::Result<()> {
        // Delete first: a wait that starts after this cannot report the key,
        // so once the slab entry is gone no new event reaches a reused key
        // from this registration (a wait already running may; see the
        // module docs).
        let result = self.poller.delete(io);
        lock(&self.sources).try_remove(source.key);
        let mut wakers = Vec::new();
        {
            let mut state = lock(&source.state);
            for dir in &mut state.dirs {
                wakers.append(&mut dir.wakers);
            }
        }
        wake_all(&mut wakers);
        result
    }

    /// Adds a timer; wakes a waiting driver if it is the new earliest.
    pub(crate) fn insert_timer(&self, when: Instant, id: u64, waker: Waker) {
        let earliest = {
            let mut timers = lock(&self.timers);
            timers.insert((when, id), waker);
            timers.first_key_value().map(|(k, _)| *k) == Some((when, id))
        };
        // The driver raises `waiting` before it reads the timers (under their
        // lock) to compute its deadline, so either it saw this timer or this
        // load sees it waiting.
        if earliest && self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify();
        }
    }

    /// Replaces the waker of a pending timer (no-op if it fired already).
    pub(crate) fn update_timer(&self, when: Instant, id: u64, waker: Waker) {
        if let Some(slot) = lock(&self.timers).get_mut(&(when, id)) {
            *slot = waker;
        }
    }

    /// Removes a timer (no-op if it fired already).
    pub(crate) fn remove_timer(&self, when: Instant, id: u64) {
        lock(&self.timers).remove(&(when, id));
    }

    /// Moves the wakers of due timers into `wakers`; returns the next deadline.
    fn fire_timers(&self, wakers: &mut Vec<Waker>) -> Option<Instant> {
        let mut timers = lock(&self.timers);
        let now = Instant::now();
        while let Some(entry) = timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            wakers.push(entry.remove());
        }
        timers.first_key_value().map(|(k, _)| k.0)
    }

    /// Takes the right to wait on the poller, if nobody has it.
    pub(crate) fn try_lock(&self) -> Option<ReactorLock<'_>> {
        self.driver.try_lock().ok().map(|buffers| ReactorLock {
            reactor: self,
            buffers,
        })
    }

    /// Takes the right to wait on the poller, waiting for it.
    pub(crate) fn lock(&self) -> ReactorLock<'_> {
        ReactorLock {
            reactor: self,
            buffers: lock(&self.driver),
        }
    }
}

impl fmt::Debug for Reactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor")
            .field("backend", &self.backend())
            .field("mode", &self.registration_mode())
            .finish_non_exhaustive()
    }
}

/// The right to wait on the reactor's poller.
pub(crate) struct ReactorLock<'a> {
    reactor: &'a Reactor,
    buffers: MutexGuard<'a, DriverBuffers>,
}

impl ReactorLock<'_> {
    /// One round: fire due timers, wait for I/O (until an event, the next
    /// timer or a notification if `block`, otherwise just look), hand the
    /// events to their sources, fire the timers that came due meanwhile, and
    /// wake every task concerned. `after_wait` runs as soon as the wait
    /// returns, before anything is woken.
    pub(crate) fn react(&mut self, block: bool, after_wait: impl FnOnce()) -> io::Result<()> {
        let reactor = self.reactor;
        let DriverBuffers { events, wakers } = &mut *self.buffers;

        if block {
            reactor.waiting.fetch_add(1, Ordering::SeqCst);
        }
        let next_timer = reactor.fire_timers(wakers);
        reactor.rounds.fetch_add(1, Ordering::SeqCst);
        let result = if block && wakers.is_empty() {
            reactor.poller.wait_deadline(events, next_timer)
        } else {
            reactor.poller.wait(events, Some(Duration::ZERO))
        };
        if block {
            reactor.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        after_wait();

        if result.is_ok() && !events.is_empty() {
            let sources = lock(&reactor.sources);
            for event in events.iter() {
                if let Some(source) = sources.get(event.key()) {
                    source.dispatch(event, reactor.edge, wakers);
                }
            }
        }
        reactor.fire_timers(wakers);
        wake_all(wakers);
        result.map(|_| ())
    }
}

/// Wakes and empties `wakers`. A panicking waker is logged, not propagated:
/// it must not take the driving thread (possibly the fallback thread) down.
fn wake_all(wakers: &mut Vec<Waker>) {
    for waker in wakers.drain(..) {
        if panic::catch_unwind(AssertUnwindSafe(|| waker.wake())).is_err() {
            tracing::error!("readiness-async: a waker panicked");
        }
    }
}

/// A registered source, shared by its [`Async`](crate::Async) and the
/// reactor's table.
pub(crate) struct Source {
    reactor: &'static Reactor,
    key: usize,
    state: Mutex<State>,
}

struct State {
    dirs: [Direction; 2],
    /// Oneshot rule: the interest the registration is armed with now
    /// (`NONE` once it fired). Unused under the edge rule.
    armed: Interest,
}

struct Direction {
    /// Readiness reported and not consumed yet. Starts set: a new source is
    /// tried first and waited on only after a `WouldBlock`.
    ready: bool,
    /// Final readiness (peer's FIN for reading; a dead connection for
    /// writing): never cleared.
    closed: bool,
    /// Bumped by every event that sets `ready` (wrapping).
    tick: u64,
    /// Tasks to wake at the next readiness. Deduplicated with `will_wake`;
    /// a cancelled wait leaves its waker until the next event (one spurious
    /// wake-up, never a lost one). All are woken: readiness is news for every
    /// waiter, and those that lose the race for the data wait again.
    wakers: Vec<Waker>,
}

impl Direction {
    const fn new() -> Direction {
        Direction {
            ready: true,
            closed: false,
            tick: 0,
            wakers: Vec::new(),
        }
    }

    fn is_ready(&self) -> bool {
        self.ready || self.closed
    }

    fn fire(&mut self, closed: bool, wakers: &mut Vec<Waker>) {
        self.ready = true;
        self.closed |= closed;
        self.tick = self.tick.wrapping_add(1);
        wakers.append(&mut self.wakers);
    }

    fn add_waker(&mut self, waker: &Waker) {
        if !self.wakers.iter().any(|w| w.will_wake(waker)) {
            self.wakers.push(waker.clone());
        }
    }
}

/// What [`Source::poll_ready`] saw.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Readiness {
    /// The direction's tick, to clear exactly this readiness later.
    pub(crate) tick: u64,
    /// The readiness is final (see [`Direction::closed`]).
    pub(crate) closed: bool,
}

impl Source {
    fn new(reactor: &'static Reactor, key: usize) -> Source {
        Source {
            reactor,
            key,
            state: Mutex::new(State {
                dirs: [Direction::new(), Direction::new()],
                armed: Interest::NONE,
            }),
        }
    }

    pub(crate) fn reactor(&self) -> &'static Reactor {
        self.reactor
    }

    /// Reactor side: applies one event.
    fn dispatch(&self, event: &Event, edge: bool, wakers: &mut Vec<Waker>) {
        let mut state = lock(&self.state);
        let error = event.is_error();
        if event.is_readable() || event.is_read_closed() || error {
            state.dirs[READ].fire(event.is_read_closed(), wakers);
        }
        if event.is_writable() || event.is_write_closed() || error {
            state.dirs[WRITE].fire(event.is_write_closed(), wakers);
        }
        if !edge {
            // The oneshot registration is disarmed now: a task still waiting
            // in the other direction must re-arm it, and only a task can.
            state.armed = Interest::NONE;
            for dir in &mut state.dirs {
                wakers.append(&mut dir.wakers);
            }
        }
    }

    /// Task side: `Ready` with the readiness if the direction is ready;
    /// otherwise stores the task's waker, arms the registration (oneshot
    /// rule) and returns `Pending`. Does not consume the readiness: the
    /// caller tries its operation and calls [`clear`](Self::clear) on
    /// `WouldBlock`.
    pub(crate) fn poll_ready(
        &self,
        dir: usize,
        cx: &mut Context<'_>,
        io: &impl AsSource,
    ) -> Poll<io::Result<Readiness>> {
        let mut state = lock(&self.state);
        let d = &state.dirs[dir];
        if d.is_ready() {
            return Poll::Ready(Ok(Readiness {
                tick: d.tick,
                closed: d.closed,
            }));
        }
        state.dirs[dir].add_waker(cx.waker());
        if let Err(e) = self.arm(&mut state, io) {
            return Poll::Ready(Err(e));
        }
        Poll::Pending
    }

    /// Task side: the readiness seen with `tick` was used up (the operation
    /// said `WouldBlock`, or a short read or write drained the socket).
    /// Keeps the flag if an event came since (the tick moved).
    pub(crate) fn clear(&self, dir: usize, tick: u64) {
        let mut state = lock(&self.state);
        let d = &mut state.dirs[dir];
        if d.tick == tick {
            d.ready = false;
        }
    }

    /// Task side, for `readable()`/`writable()`: completes when the
    /// direction is ready (first poll, `seen == None`) or when an event came
    /// after the first poll (`seen` holds the tick then), and consumes the
    /// readiness it reports.
    pub(crate) fn poll_fresh(
        &self,
        dir: usize,
        cx: &mut Context<'_>,
        io: &impl AsSource,
        seen: &mut Option<u64>,
    ) -> Poll<io::Result<()>> {
        let mut state = lock(&self.state);
        let d = &mut state.dirs[dir];
        let fresh = match *seen {
            None => d.is_ready(),
            Some(tick) => d.closed || d.tick != tick,
        };
        if fresh {
            d.ready = false;
            *seen = None;
            return Poll::Ready(Ok(()));
        }
        if seen.is_none() {
            *seen = Some(d.tick);
        }
        d.add_waker(cx.waker());
        if let Err(e) = self.arm(&mut state, io) {
            return Poll::Ready(Err(e));
        }
        Poll::Pending
    }

    /// Oneshot rule: makes the registration ask for every direction a task
    /// waits on. Called with the state locked, after adding a waker.
    fn arm(&self, state: &mut State, io: &impl AsSource) -> io::Result<()> {
        if self.reactor.edge {
            return Ok(());
        }
        let mut want = Interest::NONE;
        if !state.dirs[READ].wakers.is_empty() {
            want |= Interest::READABLE;
        }
        if !state.dirs[WRITE].wakers.is_empty() {
            want |= Interest::WRITABLE;
        }
        let interest = state.armed | want;
        if interest == state.armed {
            return Ok(());
        }
        self.reactor
            .poller
            .modify(io, self.key, interest, Mode::Oneshot)?;
        state.armed = interest;
        Ok(())
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source").field("key", &self.key).finish()
    }
}
