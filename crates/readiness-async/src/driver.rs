//! Who drives the reactor: [`block_on`], and the fallback thread.
//!
//! # The parker
//!
//! Each thread in `block_on` has a [`Parker`]: the waker of its future. Its
//! state says what waking it takes:
//!
//! - `IDLE`: the thread is running (polling its future or dispatching
//!   events); a wake-up only records `NOTIFIED`, no system call.
//! - `PARKED`: the thread sleeps in `thread::park` (someone else drives the
//!   reactor); a wake-up unparks it.
//! - `POLLING`: the thread is about to block, or blocked, in the poller's
//!   `wait`; a wake-up calls `Poller::notify`. The state goes back to `IDLE`
//!   as soon as the wait returns, before events are dispatched, so the
//!   driver waking its own task costs nothing.
//! - `NOTIFIED`: a wake-up came; the thread polls its future next.
//!
//! # Who waits on the poller
//!
//! A thread in `block_on` whose future is pending takes the reactor if it is
//! free and waits on the poller; it keeps driving (also for other threads'
//! tasks) until its own future is woken. If the reactor is taken, the thread
//! puts its parker on the reactor's idle list and parks. A driver that lets
//! go of the reactor to poll its future hands it to a parked idle thread (the
//! hand-off), so a blocked `block_on` thread is never left without a driver.
//!
//! The fallback thread (`readiness-async`, started with the reactor) drives
//! when no thread is in `block_on`: it waits on the poller with no timeout,
//! and lets go when a `block_on` starts (which notifies the poller if the
//! fallback holds it). While `block_on` threads exist it only checks every
//! [`FALLBACK_CHECK`] that some thread has run a reactor round; if none has
//! (every `block_on` thread is busy in its future), it runs one that does not
//! block, so I/O readiness still reaches tasks.

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use crate::reactor::{Reactor, lock};

/// How often the fallback thread checks that the reactor is being driven
/// while `block_on` threads exist.
pub(crate) const FALLBACK_CHECK: Duration = Duration::from_millis(10);

const IDLE: u8 = 0;
const NOTIFIED: u8 = 1;
const PARKED: u8 = 2;
const POLLING: u8 = 3;

/// The waker of a thread in `block_on`; see the module documentation.
pub(crate) struct Parker {
    state: AtomicU8,
    thread: Thread,
    reactor: &'static Reactor,
    /// On the reactor's idle list.
    queued: AtomicBool,
}

impl Parker {
    fn new(reactor: &'static Reactor) -> Arc<Parker> {
        Arc::new(Parker {
            state: AtomicU8::new(IDLE),
            thread: thread::current(),
            reactor,
            queued: AtomicBool::new(false),
        })
    }

    /// Wakes the thread; returns the state it was in.
    fn unpark(&self) -> u8 {
        let previous = self.state.swap(NOTIFIED, Ordering::AcqRel);
        match previous {
            PARKED => self.thread.unpark(),
            POLLING => self.reactor.notify(),
            _ => {}
        }
        previous
    }

    /// Consumes a wake-up, if one came.
    fn take_notification(&self) -> bool {
        self.state
            .compare_exchange(NOTIFIED, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// `IDLE` to `POLLING`; false if a wake-up came first.
    fn enter_polling(&self) -> bool {
        self.state
            .compare_exchange(IDLE, POLLING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// `POLLING` to `IDLE` (a wake-up that came meanwhile stays).
    fn leave_polling(&self) {
        let _ = self
            .state
            .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Sleeps until woken (returns at once if a wake-up came already).
    fn park(&self) {
        if self
            .state
            .compare_exchange(IDLE, PARKED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // `thread::park` may return spuriously; the state tells.
            while self.state.load(Ordering::Acquire) == PARKED {
                thread::park();
            }
        }
    }
}

impl Wake for Parker {
    fn wake(self: Arc<Self>) {
        self.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.unpark();
    }
}

impl Reactor {
    /// Puts `parker` on the idle list (once).
    fn queue_idle(&self, parker: &Arc<Parker>) {
        if !parker.queued.swap(true, Ordering::AcqRel) {
            lock(&self.idle).push(parker.clone());
            self.idle_len.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Takes `parker` off the idle list, if it is on it.
    fn unqueue_idle(&self, parker: &Arc<Parker>) {
        if parker.queued.load(Ordering::Acquire) {
            let mut idle = lock(&self.idle);
            if let Some(i) = idle.iter().position(|p| Arc::ptr_eq(p, parker)) {
                idle.swap_remove(i);
                self.idle_len.fetch_sub(1, Ordering::SeqCst);
            }
            parker.queued.store(false, Ordering::Release);
        }
    }

    /// Called by a driver that just let go of the reactor: wakes idle
    /// threads until one that was parked (it will take the reactor); the
    /// others woken were running and come to the reactor by themselves.
    pub(crate) fn hand_off(&self) {
        if self.idle_len.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut idle = lock(&self.idle);
        while let Some(parker) = idle.pop() {
            self.idle_len.fetch_sub(1, Ordering::SeqCst);
            parker.queued.store(false, Ordering::Release);
            if parker.unpark() == PARKED {
                break;
            }
        }
    }

    fn unpark_fallback(&self) {
        if let Some(thread) = self.fallback.get() {
            thread.unpark();
        }
    }
}

/// Starts the fallback thread of `reactor` (once). Without it the reactor
/// still works for `block_on` users; a failure is logged.
pub(crate) fn spawn_fallback(reactor: &'static Reactor) {
    let spawned = thread::Builder::new()
        .name("readiness-async".into())
        .spawn(move || fallback_loop(reactor));
    match spawned {
        Ok(handle) => {
            let _ = reactor.fallback.set(handle.thread().clone());
        }
        Err(e) => tracing::error!(
            "readiness-async: cannot start the fallback thread ({e}); \
             only threads in block_on will drive the reactor"
        ),
    }
}

fn fallback_loop(reactor: &'static Reactor) {
    let mut last_round = reactor.rounds();
    loop {
        if reactor.block_on_count.load(Ordering::SeqCst) == 0 {
            let mut guard = reactor.lock();
            reactor.fallback_driving.store(true, Ordering::SeqCst);
            // A block_on that started before the store above is seen here;
            // one that starts after it sees the flag and notifies.
            if reactor.block_on_count.load(Ordering::SeqCst) == 0
                && let Err(e) = guard.react(true, || {})
            {
                tracing::error!("readiness-async: fallback thread: wait failed: {e}");
                thread::sleep(FALLBACK_CHECK);
            }
            reactor.fallback_driving.store(false, Ordering::SeqCst);
            drop(guard);
            reactor.hand_off();
        } else {
            thread::park_timeout(FALLBACK_CHECK);
            let round = reactor.rounds();
            if round == last_round
                && reactor.block_on_count.load(Ordering::SeqCst) > 0
                && let Some(mut guard) = reactor.try_lock()
            {
                if let Err(e) = guard.react(false, || {}) {
                    tracing::error!("readiness-async: fallback thread: wait failed: {e}");
                }
                drop(guard);
                reactor.hand_off();
            }
        }
        last_round = reactor.rounds();
    }
}

/// Runs a future to completion on this thread, driving the reactor while it
/// is pending.
///
/// While the future cannot make progress the thread waits on the reactor's
/// poller (if no other thread does), so the I/O readiness and timers that
/// wake the future are processed right here, without a thread switch. Any
/// executor can be run inside it (`block_on(executor.run(future))`), and any
/// number of threads can be in `block_on` at once: one drives the reactor,
/// the others sleep until their future is woken or the reactor is handed to
/// them.
///
/// Calls may nest (a `block_on` inside a future run by `block_on`); the inner
/// one has its own waker.
///
/// # Panics
///
/// If the reactor cannot be created (see [`Reactor::global`]), if the future
/// panics, or if waiting on the poller fails (a broken poller; it never
/// fails for a reason the caller could fix).
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use readiness_async::{block_on, Timer};
///
/// let start = Instant::now();
/// block_on(async {
///     Timer::after(Duration::from_millis(10)).await;
/// });
/// assert!(start.elapsed() >= Duration::from_millis(10));
/// ```
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    let reactor = Reactor::global();
    reactor.block_on_count.fetch_add(1, Ordering::SeqCst);
    if reactor.fallback_driving.load(Ordering::SeqCst) {
        // The fallback thread may be blocked on the poller: make it let go.
        reactor.notify();
    }
    let _count = OnDrop(|| {
        if reactor.block_on_count.fetch_sub(1, Ordering::SeqCst) == 1 {
            reactor.unpark_fallback();
        }
    });

    thread_local! {
        // The initializer is `const` already; clippy 1.96 (the Windows cross
        // lint, std built from source) reports it anyway.
        #[allow(clippy::missing_const_for_thread_local)]
        static CACHE: RefCell<Option<(Arc<Parker>, Waker)>> = const { RefCell::new(None) };
    }
    CACHE.with(|cache| match cache.try_borrow_mut() {
        Ok(mut cache) => {
            let (parker, waker) = cache.get_or_insert_with(|| {
                let parker = Parker::new(reactor);
                let waker = Waker::from(parker.clone());
                (parker, waker)
            });
            run(reactor, parker, waker, future)
        }
        // A nested block_on: the outer one holds the cache.
        Err(_) => {
            let parker = Parker::new(reactor);
            let waker = Waker::from(parker.clone());
            run(reactor, &parker, &waker, future)
        }
    })
}

fn run<T>(
    reactor: &'static Reactor,
    parker: &Arc<Parker>,
    waker: &Waker,
    future: impl Future<Output = T>,
) -> T {
    let _unqueue = OnDrop(|| reactor.unqueue_idle(parker));
    // A wake-up left over from an earlier block_on on this thread is moot.
    parker.state.store(IDLE, Ordering::Release);
    let mut future = pin!(future);
    let mut cx = Context::from_waker(waker);
    let mut last_round = reactor.rounds();
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        if parker.take_notification() {
            // Woken while it ran (a yield, or a wake-up from elsewhere):
            // poll again, but let I/O in first if no reactor round ran since
            // the last time this thread came here, so a future that keeps
            // waking itself cannot starve the sources.
            if reactor.rounds() == last_round
                && let Some(mut guard) = reactor.try_lock()
            {
                if let Err(e) = guard.react(false, || {}) {
                    panic!("readiness-async: waiting on the poller failed: {e}");
                }
                drop(guard);
                reactor.hand_off();
            }
            last_round = reactor.rounds();
            continue;
        }
        wait(reactor, parker);
        last_round = reactor.rounds();
    }
}

/// Returns once `parker` was woken, driving the reactor meanwhile if it can.
fn wait(reactor: &'static Reactor, parker: &Arc<Parker>) {
    loop {
        if let Some(mut guard) = reactor.try_lock() {
            loop {
                if !parker.enter_polling() {
                    break;
                }
                if let Err(e) = guard.react(true, || parker.leave_polling()) {
                    parker.leave_polling();
                    panic!("readiness-async: waiting on the poller failed: {e}");
                }
                if parker.state.load(Ordering::Acquire) == NOTIFIED {
                    break;
                }
            }
            drop(guard);
            reactor.hand_off();
            parker.take_notification();
            return;
        }
        // Someone else drives. Sleep on the idle list until our future is
        // woken or the reactor is handed to us; check once more after
        // queueing, in case the driver let go in between.
        reactor.queue_idle(parker);
        if let Some(guard) = reactor.try_lock() {
            drop(guard);
            continue;
        }
        parker.park();
        if parker.take_notification() {
            return;
        }
    }
}

/// Runs a closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
